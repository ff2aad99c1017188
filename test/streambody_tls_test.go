package test

import (
	"crypto/rand"
	"crypto/sha256"
	"crypto/tls"
	"encoding/hex"
	"encoding/json"
	"fmt"
	"io"
	"net/http"
	"os"
	"path/filepath"
	"strconv"
	"strings"
	"testing"
	"time"

	"github.com/modzmq/modzmq/internal/zmqtest"
)

// A streamed request body through mod_ssl, over HTTP/1.1 and HTTP/2: the
// body loop reads the client without waiting (through mod_ssl's filter,
// where a record may hold more than one read takes, and under HTTP/2
// through mod_http2's stream), and waits for the client and the worker at
// once on the client's socket or, under HTTP/2, the pipe mod_http2 signals
// the stream's input on. Over both, upload_sink.py gets every byte (its
// SHA-256 matches); an answer given before the body is complete
// (early_answer_worker.py's 413) reaches a client that sends at once, and
// one that paused after 64 KiB while it still pauses; and a client that
// pauses while the worker waits for the rest costs the children no CPU to
// speak of (a wait that woke for nothing would spin).
func TestStreamedBodyOverTLS(t *testing.T) {
	sink := startPyScript(t, "examples/python/upload_sink.py")
	early := startEarlyWorker(t)
	tlsPort := freePort(t)
	locations := fmt.Sprintf(`	<Location /up>
		SetHandler zmq
		ZmqBackend %s
		ZmqStreamBody on
		ZmqMaxBody 0
	</Location>
	<Location /early>
		SetHandler zmq
		ZmqBackend %s
		ZmqStreamBody on
		ZmqMaxBody 0
	</Location>
`, sink.Endpoint, early.Endpoint)
	h, _ := startTLSHTTPD(t, httpdParams{MPM: "event", Extra: locations}, tlsPort, "", locations)
	base := fmt.Sprintf("https://127.0.0.1:%d", tlsPort)

	body := make([]byte, 8<<20)
	rand.Read(body)
	sum := sha256.Sum256(body)
	for _, h2 := range []bool{false, true} {
		name := map[bool]string{false: "HTTP1.1", true: "HTTP2"}[h2]
		t.Run(name, func(t *testing.T) {
			tr := &http.Transport{TLSClientConfig: &tls.Config{InsecureSkipVerify: true}, ForceAttemptHTTP2: h2}
			if !h2 {
				tr.TLSNextProto = map[string]func(string, *tls.Conn) http.RoundTripper{} // HTTP/1.1 only
			}
			defer tr.CloseIdleConnections()
			c := &http.Client{Transport: tr, Timeout: 60 * time.Second}

			resp, err := c.Post(base+"/up/file", "application/octet-stream", strings.NewReader(string(body)))
			if err != nil {
				t.Fatal(err)
			}
			got, _ := io.ReadAll(resp.Body)
			resp.Body.Close()
			if want := map[bool]int{false: 1, true: 2}[h2]; resp.ProtoMajor != want {
				t.Errorf("the upload went over HTTP/%d, want HTTP/%d", resp.ProtoMajor, want)
			}
			var r struct {
				Bytes  int64  `json:"bytes"`
				SHA256 string `json:"sha256"`
			}
			if resp.StatusCode != 200 || json.Unmarshal(got, &r) != nil || r.Bytes != int64(len(body)) ||
				r.SHA256 != hex.EncodeToString(sum[:]) {
				t.Errorf("upload of %d bytes over TLS: %d %s; want 200 with %d bytes and SHA-256 %x",
					len(body), resp.StatusCode, got, len(body), sum)
			}

			// The client pauses after 64 KiB while upload_sink.py waits for
			// the rest: the children wait, they do not spin.
			pr, pw := io.Pipe()
			done := make(chan string, 1)
			go func() {
				resp, err := c.Post(base+"/up/paused", "application/octet-stream", pr)
				if err != nil {
					done <- err.Error()
					return
				}
				b, _ := io.ReadAll(resp.Body)
				resp.Body.Close()
				done <- fmt.Sprintf("%d %s", resp.StatusCode, b)
			}()
			pw.Write(body[:64<<10])
			kids := children(h.pid())
			before := cpuTicks(kids)
			time.Sleep(1500 * time.Millisecond)
			used := cpuTicks(kids) - before
			pw.Write(body[64<<10:])
			pw.Close()
			if got := zmqtest.WaitFor(t, done, "the paused upload's answer"); !strings.HasPrefix(got, "200 ") ||
				!strings.Contains(got, fmt.Sprintf(`"bytes": %d`, len(body))) {
				t.Errorf("paused upload over TLS: %s", got)
			}
			t.Logf("the children used %d ticks of CPU while the client paused for 1.5 s", used)
			if used > 50 {
				t.Errorf("the children used %d ticks (1/100 s) of CPU in the 1.5 s the client paused: the body loop spins", used)
			}

			// The worker answers 413 after the first part: a client still
			// sending gets it, and so does one that paused after 64 KiB,
			// while it pauses.
			resp, err = c.Post(base+"/early/whole", "application/octet-stream", strings.NewReader(string(body)))
			if err != nil {
				t.Fatalf("early answer over TLS: %v", err)
			}
			got, _ = io.ReadAll(resp.Body)
			resp.Body.Close()
			if resp.StatusCode != 413 || !strings.Contains(string(got), "no thanks") {
				t.Errorf("early answer over TLS: %d %q, want 413 \"no thanks\"", resp.StatusCode, got)
			}
			pr, pw = io.Pipe()
			defer pw.Close()
			early := make(chan string, 1)
			go func() {
				resp, err := c.Post(base+"/early/paused", "application/octet-stream", pr)
				if err != nil {
					early <- err.Error()
					return
				}
				b, _ := io.ReadAll(resp.Body)
				resp.Body.Close()
				early <- fmt.Sprintf("%d %s", resp.StatusCode, b)
			}()
			pw.Write(body[:64<<10])
			if got := zmqtest.WaitFor(t, early, "the answer to a client that paused"); got != "413 no thanks" {
				t.Errorf("early answer to a paused client over TLS: %q, want 413 \"no thanks\"", got)
			}
		})
	}
}

// cpuTicks is the user and system CPU time of pids, in ticks of 1/100 s.
func cpuTicks(pids []int) (n int64) {
	for _, pid := range pids {
		b, err := os.ReadFile(fmt.Sprintf("/proc/%d/stat", pid))
		if err != nil {
			continue
		}
		s := string(b)
		f := strings.Fields(s[strings.LastIndexByte(s, ')')+1:])
		if len(f) > 12 {
			u, _ := strconv.ParseInt(f[11], 10, 64)
			k, _ := strconv.ParseInt(f[12], 10, 64)
			n += u + k
		}
	}
	return n
}

// A streamed body over CurveZMQ, whose connections Go waits on (the step
// after every modzmq_wait waits in Go, modzmq_waits says 0): the body loop
// reads the client waiting, as it does without a descriptor to watch, and
// upload_sink.py gets every byte of a 32 MiB upload (its SHA-256 matches).
// A loop that waited on the worker and the client at once here would step
// into Go each time the client had not sent the next bytes yet, and wait
// there up to 100 ms on a worker with nothing to say: the upload crawled
// until ZmqTimeout ended it with 504.
func TestStreamedBodyOverCurve(t *testing.T) {
	requireBuilt(t, "zmq-gateway")
	dir := t.TempDir()
	os.Chmod(dir, 0o755)
	os.Chmod(filepath.Dir(dir), 0o755) // children run as the Apache User
	worker, bridgeKey := keygen(t, dir, "worker"), keygen(t, dir, "bridge")
	sink := startPyScript(t, "examples/python/upload_sink.py", "--curve-secret", worker+".key_secret")
	h := startHTTPD(t, httpdParams{MPM: "event", Extra: fmt.Sprintf(`	<Location /up>
		SetHandler zmq
		ZmqBackend %s
		ZmqCurve %s %s
		ZmqStreamBody on
		ZmqMaxBody 0
	</Location>
`, sink.Endpoint, worker+".key", bridgeKey+".key_secret")})

	body := make([]byte, 32<<20)
	rand.Read(body)
	sum := sha256.Sum256(body)
	resp, got := do(t, "POST", h.URL+"/up/file", "", strings.NewReader(string(body)))
	var r struct {
		Bytes  int64  `json:"bytes"`
		SHA256 string `json:"sha256"`
	}
	if resp.StatusCode != 200 || json.Unmarshal(got, &r) != nil || r.Bytes != int64(len(body)) ||
		r.SHA256 != hex.EncodeToString(sum[:]) {
		t.Fatalf("upload of %d bytes over CurveZMQ: %d %s; want 200 with %d bytes and SHA-256 %x",
			len(body), resp.StatusCode, got, len(body), sum)
	}
}
