package gateway

import (
	"log/slog"
	"net/http"
	"net/http/httptest"
	"strings"
	"testing"
)

// What net/http logs reaches the gateway's log: a panic it recovered from
// a handler as an error with MODZMQ0212, the client and the stack; the
// rest at debug.
func TestServerLogRaisesPanics(t *testing.T) {
	var out syncBuffer
	logger := slog.New(slog.NewTextHandler(&out, &slog.HandlerOptions{Level: slog.LevelDebug}))
	srv := httptest.NewUnstartedServer(http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		if r.URL.Path == "/panic" {
			panic("the handler broke")
		}
	}))
	srv.Config.ErrorLog = ErrorLog(logger)
	srv.Start()
	defer srv.Close()

	if _, err := http.Get(srv.URL + "/panic"); err == nil {
		t.Errorf("a request whose handler panicked got an answer")
	}
	srv.Config.ErrorLog.Print("http: TLS handshake error from 127.0.0.1:1: EOF")
	srv.Close()
	logged := out.String()
	var panics, handshakes []string
	for _, line := range strings.Split(logged, "\n") {
		switch {
		case strings.Contains(line, "MODZMQ0212"):
			panics = append(panics, line)
		case strings.Contains(line, "TLS handshake error"):
			handshakes = append(handshakes, line)
		}
	}
	if len(panics) != 1 || !strings.Contains(panics[0], "level=ERROR") || !strings.Contains(panics[0], `panic="the handler broke"`) ||
		!strings.Contains(panics[0], "client=127.0.0.1:") || !strings.Contains(panics[0], "server_test.go") {
		t.Errorf("the panic's line, want one error with MODZMQ0212, the client, the panic and a stack through the handler:\n%s", logged)
	}
	if len(handshakes) != 1 || !strings.Contains(handshakes[0], "level=DEBUG") {
		t.Errorf("a failed TLS handshake, want one debug line:\n%s", logged)
	}
}
