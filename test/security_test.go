package test

import (
	"bufio"
	"fmt"
	"io"
	"net"
	"net/http"
	"os"
	"os/exec"
	"path/filepath"
	"strings"
	"testing"
	"time"
)

// keygen writes a key pair with zmq-gateway keygen into dir and returns the
// base path; the secret certificate is made readable by the Apache User.
func keygen(t *testing.T, dir, name string) string {
	t.Helper()
	base := filepath.Join(dir, name)
	if out, err := exec.Command(buildPath("zmq-gateway"), "keygen", base).CombinedOutput(); err != nil {
		t.Fatalf("keygen: %v %s", err, out)
	}
	os.Chmod(base+".key_secret", 0o644) // test only: children run as www-data
	return base
}

func TestCurve(t *testing.T) {
	requireBuilt(t, "zmq-gateway")
	dir := t.TempDir()
	os.Chmod(dir, 0o755)
	os.Chmod(filepath.Dir(dir), 0o755) // children run as the Apache User
	worker, bridgeKey, stranger, other := keygen(t, dir, "worker"), keygen(t, dir, "bridge"), keygen(t, dir, "stranger"), keygen(t, dir, "other")
	allowed := filepath.Join(dir, "allowed")
	os.Mkdir(allowed, 0o755)
	b, _ := os.ReadFile(bridgeKey + ".key")
	os.WriteFile(filepath.Join(allowed, "bridge.key"), b, 0o644)

	secure := startPyWorker(t, "secure", "--curve-secret", worker+".key_secret")
	strict := startPyWorker(t, "strict", "--curve-secret", worker+".key_secret", "--curve-allow", allowed)
	plain := startPyWorker(t, "plain")
	loc := func(path, ep, server, client string) string {
		return fmt.Sprintf("\t<Location %s>\n\t\tSetHandler zmq\n\t\tZmqBackend %s\n\t\tZmqCurve %s %s\n\t\tZmqTimeout 5\n\t</Location>\n",
			path, ep, server, client)
	}
	extra := loc("/ok", secure.Endpoint, worker+".key", bridgeKey+".key_secret") +
		loc("/allowed", strict.Endpoint, worker+".key", bridgeKey+".key_secret") +
		loc("/denied", strict.Endpoint, worker+".key", stranger+".key_secret") +
		loc("/wrong-server", secure.Endpoint, other+".key", bridgeKey+".key_secret") +
		loc("/plain-worker", plain.Endpoint, worker+".key", bridgeKey+".key_secret")
	h := startHTTPD(t, httpdParams{MPM: "event", Extra: extra})
	for path, want := range map[string]int{"/ok": 200, "/allowed": 200, "/denied": 503, "/wrong-server": 503, "/plain-worker": 503} {
		resp, b := do(t, "GET", h.URL+path+"/x", "", nil)
		if resp.StatusCode != want {
			t.Errorf("%s: status %d, want %d", path, resp.StatusCode, want)
		}
		if want == 200 {
			if e := decodeEcho(t, b); e.Target != path+"/x" {
				t.Errorf("%s: reply for %q", path, e.Target)
			}
		}
	}
	// Each refusal is logged with the endpoint and the reason.
	for ep, reason := range map[string]string{strict.Endpoint: "authentication failed", secure.Endpoint: "handshake failed",
		plain.Endpoint: "handshake failed"} {
		h.expect(`MODZMQ0123: ` + ep + `: ZMTP handshake failed`)
		h.expect(`MODZMQ0121: ` + ep)
		h.expect(`MODZMQ0101: .*` + ep)
		checkFor(t, 5*time.Second, func() error {
			if !strings.Contains(h.errorLog(), "MODZMQ0123: "+ep+": ZMTP handshake failed") || !strings.Contains(h.errorLog(), reason) {
				return fmt.Errorf("no MODZMQ0123 line for %s with %q", ep, reason)
			}
			return nil
		})
	}
}

func TestCurveConfigMistakes(t *testing.T) {
	dir := t.TempDir()
	requireBuilt(t, "zmq-gateway")
	k := keygen(t, dir, "k")
	for _, tt := range []struct{ args, want string }{
		{dir + "/missing.key " + k + ".key_secret", "cannot read"},
		{k + ".key " + k + ".key", "has no secret-key"},
		{"/etc/hostname " + k + ".key_secret", "has no public-key"},
		{k + ".key", "needs the worker's public certificate"},
	} {
		out, err := configtest(t, "", "ZmqBackend tcp://127.0.0.1:1\n\tZmqCurve "+tt.args)
		if err == nil || !strings.Contains(out, tt.want) {
			t.Errorf("ZmqCurve %s: %v, output lacks %q:\n%s", tt.args, err, tt.want, out)
		}
	}
}

func TestGatewayCurveAndKeygenInterop(t *testing.T) {
	requireBuilt(t, "zmq-gateway")
	dir := t.TempDir()
	// The worker's certificate comes from pyzmq, the gateway's from keygen.
	out, err := exec.Command(python, "-c", "import zmq.auth, sys; zmq.auth.create_certificates(sys.argv[1], 'w')", dir).CombinedOutput()
	if err != nil {
		t.Fatalf("pyzmq create_certificates: %v %s", err, out)
	}
	gw := keygen(t, dir, "gw")
	w := startPyWorker(t, "curve", "--curve-secret", filepath.Join(dir, "w.key_secret"))
	g := startGatewayProc(t, "", fmt.Sprintf("  - prefix: /\n    backend: [%s]\n    curve_server_cert: %s\n    curve_client_cert: %s\n",
		w.Endpoint, filepath.Join(dir, "w.key"), gw+".key_secret"))
	resp, b := do(t, "GET", g.URL+"/secret", "", nil)
	if e := decodeEcho(t, b); resp.StatusCode != 200 || e.Worker != "curve" {
		t.Errorf("CURVE through the gateway: %d %q", resp.StatusCode, b)
	}
}

func TestOversizedReplies(t *testing.T) {
	w := startPyWorker(t, "big")
	h := startHTTPD(t, httpdParams{MPM: "event", Extra: fmt.Sprintf(
		"\t<Location /r>\n\t\tSetHandler zmq\n\t\tZmqBackend %s\n\t\tZmqMaxReply 1000\n\t\tZmqTimeout 2\n\t</Location>\n", w.Endpoint)})
	h.expect(`MODZMQ0103: .*is 1503 bytes, over the limit of 1000`)
	h.expect(`MODZMQ0103: .*the reply passed the connection's size limit`)
	// The limit counts the whole reply: status, headers and body.
	if resp, b := do(t, "GET", h.URL+"/r/blob?n=997", "", nil); resp.StatusCode != 200 || len(b) != 997 {
		t.Errorf("reply at the limit: %d, %d bytes", resp.StatusCode, len(b))
	}
	if resp, _ := do(t, "GET", h.URL+"/r/blob?n=1500", "", nil); resp.StatusCode != 502 {
		t.Errorf("reply over the limit: %d, want 502", resp.StatusCode)
	}
	// A reply far over the limit (past the limit + 64 KiB) is refused from
	// its frame header, before the frame is read: the connection is closed
	// and the request answered 502 at once.
	if resp, _ := do(t, "GET", h.URL+"/r/blob?n=200000", "", nil); resp.StatusCode != 502 {
		t.Errorf("huge reply: %d, want 502", resp.StatusCode)
	}
	if resp, _ := do(t, "GET", h.URL+"/r/blob?n=10", "", nil); resp.StatusCode != 200 {
		t.Errorf("after the huge reply: %d, want 200", resp.StatusCode)
	}
}

// TestHostileClientsAgainstApache sends what attackers send; each gets a
// status or a closed connection, no child dies (checked by the error_log
// scan), and no oversized or unfinished body reaches a worker.
func TestHostileClientsAgainstApache(t *testing.T) {
	w := startPyWorker(t, "hostile", "--log")
	h := startHTTPD(t, httpdParams{MPM: "event", Extra: fmt.Sprintf(
		"\t<Location /h>\n\t\tSetHandler zmq\n\t\tZmqBackend %s\n\t\tZmqMaxBody 1000\n\t</Location>\n", w.Endpoint)})
	h.expect(`MODZMQ001[345]: `)
	h.expect(`AH00566|AH10244|AH00126|AH00565|AH02429|AH10173|AH00567`) // httpd's own refusals of bad requests
	big := strings.Repeat("a", 10000)
	tests := []struct {
		name, req string
		status    int // 0: the connection may just close
	}{
		{"huge header", "GET /h/x HTTP/1.1\r\nHost: x\r\nX-Big: " + strings.Repeat("b", 20000) + "\r\n\r\n", 400},
		{"malformed header", "GET /h/x HTTP/1.1\r\nHost: x\r\nno colon here\r\n\r\n", 400},
		{"NUL in target", "GET /h/a%00b HTTP/1.1\r\nHost: x\r\n\r\n", 404},
		{"dot-dot above root", "GET /../../etc/passwd HTTP/1.1\r\nHost: x\r\n\r\n", 400},
		{"body over ZmqMaxBody", "POST /h/tok-big HTTP/1.1\r\nHost: x\r\nContent-Length: 10000\r\n\r\n" + big, 413},
		{"lying Content-Length", "POST /h/tok-short HTTP/1.1\r\nHost: x\r\nContent-Length: 900\r\n\r\nonly this", 0},
		{"bad chunking", "POST /h/tok-chunk HTTP/1.1\r\nHost: x\r\nTransfer-Encoding: chunked\r\n\r\nzz\r\nabc\r\n0\r\n\r\n", 400},
	}
	for _, tt := range tests {
		c, err := net.Dial("tcp", fmt.Sprintf("127.0.0.1:%d", h.Port))
		if err != nil {
			t.Fatal(err)
		}
		io.WriteString(c, tt.req)
		if tt.name == "lying Content-Length" {
			c.(*net.TCPConn).CloseWrite() // the rest of the body never comes
		}
		c.SetReadDeadline(time.Now().Add(40 * time.Second))
		resp, err := http.ReadResponse(bufio.NewReader(c), nil)
		switch {
		case err != nil && tt.status != 0:
			t.Errorf("%s: %v", tt.name, err)
		case err == nil && tt.status != 0 && resp.StatusCode != tt.status:
			t.Errorf("%s: status %d, want %d", tt.name, resp.StatusCode, tt.status)
		case err == nil && tt.status == 0 && resp.StatusCode < 400:
			t.Errorf("%s: status %d, want an error", tt.name, resp.StatusCode)
		}
		c.Close()
	}
	if resp, _ := do(t, "GET", h.URL+"/h/still-fine", "", nil); resp.StatusCode != 200 {
		t.Errorf("after the hostile requests: %d", resp.StatusCode)
	}
	if seen := w.Output.String(); strings.Contains(seen, "tok-") {
		t.Errorf("a bad request reached the worker: %q", seen)
	}
}
