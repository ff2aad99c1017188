package gateway

import (
	"bytes"
	"io"
	"net/http"
	"net/http/httptest"
	"strings"
	"sync/atomic"
	"testing"
	"time"

	"github.com/modzmq/modzmq/internal/zmqtest"
)

// metaEcho answers with the target, then the meta lines.
func metaEcho(calls *atomic.Int32) func([][]byte) [][]byte {
	return func(req [][]byte) [][]byte {
		calls.Add(1)
		return [][]byte{[]byte("200"), []byte("X-Method: " + string(req[1]) + "\r\n"), append(append(req[2], '\n'), req[4]...)}
	}
}

func startGateway(t *testing.T, cfg *Config) (string, *bytes.Buffer) {
	t.Helper()
	if err := cfg.Check(); err != nil {
		t.Fatal(err)
	}
	g, err := New(cfg, nil)
	if err != nil {
		t.Fatal(err)
	}
	var access bytes.Buffer
	srv := httptest.NewUnstartedServer(AccessLog(g, &access))
	srv.Config.ConnContext = ConnContext
	checkHandlerPanics(t, srv)
	srv.Start()
	t.Cleanup(func() { srv.Close(); g.Close() })
	return srv.URL, &access
}

func get(t *testing.T, method, url, host string, body io.Reader) (*http.Response, string) {
	t.Helper()
	req, _ := http.NewRequest(method, url, body)
	if host != "" {
		req.Host = host
	}
	resp, err := http.DefaultClient.Do(req)
	if err != nil {
		t.Fatal(err)
	}
	defer resp.Body.Close()
	b, _ := io.ReadAll(resp.Body)
	return resp, string(b)
}

func TestGatewayRoutingAndFailures(t *testing.T) {
	var calls, smallCalls atomic.Int32
	echo := zmqtest.REP(t, metaEcho(&calls))
	small := zmqtest.REP(t, metaEcho(&smallCalls))
	slow := zmqtest.REP(t, func(r [][]byte) [][]byte { time.Sleep(time.Second); return [][]byte{nil} })
	bad := zmqtest.REP(t, func(r [][]byte) [][]byte { return [][]byte{[]byte("abc"), nil} })
	ten := int64(10)
	url, access := startGateway(t, &Config{Routes: []Route{
		{Path: "/users/{id:[0-9]+}", Host: "{sub}.example.test", Methods: []string{"GET", "PUT"}, Backend: []string{echo}},
		{Prefix: "/api/", StripPrefix: "/api", Backend: []string{echo}},
		{Prefix: "/slow", Timeout: Duration(200 * time.Millisecond), Backend: []string{slow}},
		{Prefix: "/dead", Backend: []string{"tcp://127.0.0.1:1"}},
		{Prefix: "/bad", Backend: []string{bad}},
		{Prefix: "/small", MaxBody: &ten, Backend: []string{small}},
	}})

	resp, body := get(t, "GET", url+"/users/42?x=1", "acme.example.test", nil)
	if resp.StatusCode != 200 || !strings.HasPrefix(body, "/users/42?x=1\n") || resp.Header.Get("X-Method") != "GET" {
		t.Errorf("host+path route: %d %q", resp.StatusCode, body)
	}
	for _, want := range []string{"var-sub: acme\r\n", "var-id: 42\r\n", "route: /users/{id:[0-9]+}\r\n", "host: acme.example.test\r\n", "request-id: "} {
		if !strings.Contains(body, want) {
			t.Errorf("meta lacks %q: %q", want, body)
		}
	}
	resp, _ = get(t, "POST", url+"/users/42", "acme.example.test", nil)
	if resp.StatusCode != 405 || resp.Header.Get("Allow") != "GET, PUT" {
		t.Errorf("wrong method: %d Allow %q", resp.StatusCode, resp.Header.Get("Allow"))
	}
	if resp, _ = get(t, "GET", url+"/users/abc", "acme.example.test", nil); resp.StatusCode != 404 {
		t.Errorf("template mismatch: %d, want 404", resp.StatusCode)
	}
	if resp, _ = get(t, "GET", url+"/users/42", "other.host", nil); resp.StatusCode != 404 {
		t.Errorf("host mismatch: %d, want 404", resp.StatusCode)
	}
	if resp, body = get(t, "GET", url+"/api/x%20y?q", "", nil); resp.StatusCode != 200 || !strings.HasPrefix(body, "/x%20y?q\n") {
		t.Errorf("strip prefix: %d %q", resp.StatusCode, body)
	}
	for path, want := range map[string]int{"/slow": 504, "/dead": 503, "/bad": 502, "/nowhere": 404} {
		if resp, _ := get(t, "GET", url+path, "", nil); resp.StatusCode != want {
			t.Errorf("%s: %d, want %d", path, resp.StatusCode, want)
		}
	}
	if resp, _ := get(t, "POST", url+"/small", "", strings.NewReader("eleven byte")); resp.StatusCode != 413 {
		t.Errorf("Content-Length over max_body: %d", resp.StatusCode)
	}
	if resp, _ := get(t, "POST", url+"/small", "", io.MultiReader(strings.NewReader("eleven byte"))); resp.StatusCode != 413 {
		t.Errorf("chunked over max_body: %d", resp.StatusCode)
	}
	if smallCalls.Load() != 0 {
		t.Errorf("the worker saw %d oversized requests", smallCalls.Load())
	}
	if resp, _ := get(t, "POST", url+"/small", "", strings.NewReader("ten bytes!")); resp.StatusCode != 200 || smallCalls.Load() != 1 {
		t.Errorf("body at max_body: %d", resp.StatusCode)
	}
	if !strings.Contains(access.String(), `"GET /slow HTTP/1.1" 504 `) {
		t.Errorf("access log lacks the 504 line:\n%s", access)
	}
}

func TestGatewayHEADAndDuplicateHeaders(t *testing.T) {
	w := zmqtest.REP(t, func(r [][]byte) [][]byte {
		return [][]byte{[]byte("200"), []byte("Set-Cookie: a=1\r\nSet-Cookie: b=2\r\nConnection: close\r\n"), []byte("12345")}
	})
	url, _ := startGateway(t, &Config{Routes: []Route{{Prefix: "/", Backend: []string{w}}}})
	resp, body := get(t, "HEAD", url+"/", "", nil)
	if resp.StatusCode != 200 || body != "" || resp.ContentLength != 5 {
		t.Errorf("HEAD: %d %q length %d", resp.StatusCode, body, resp.ContentLength)
	}
	resp, body = get(t, "GET", url+"/", "", nil)
	if got := strings.Join(resp.Header.Values("Set-Cookie"), "|"); got != "a=1|b=2" || body != "12345" || resp.Close {
		t.Errorf("Set-Cookie %q body %q close %v", got, body, resp.Close)
	}
}
