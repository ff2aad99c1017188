package test

import (
	"fmt"
	"os/exec"
	"strings"
	"testing"
	"time"
)

// sseLinePythonClient reads the SSE stream at argv[1] with http.client,
// line by line as it arrives, and prints each data line, flushed; with a
// count in argv[2] it leaves (closes its connection and exits) after that
// many events, otherwise it reads to the end of the stream and prints
// "end". It checks the head: 200, text/event-stream, chunked (HTTP/1.1).
const sseLinePythonClient = `
import http.client, sys, urllib.parse
u = urllib.parse.urlsplit(sys.argv[1])
leave_after = int(sys.argv[2]) if len(sys.argv) > 2 else 0
conn = http.client.HTTPConnection(u.hostname, u.port, timeout=30)
conn.request("GET", u.path, headers={"Accept": "text/event-stream"})
r = conn.getresponse()
assert r.status == 200, r.status
assert r.version == 11, r.version
assert r.getheader("Content-Type", "").startswith("text/event-stream"), r.getheader("Content-Type")
assert r.getheader("Transfer-Encoding", "").lower() == "chunked", r.getheader("Transfer-Encoding")
events = 0
while True:
    line = r.readline()
    if not line:
        break
    if line == b"\n":
        continue
    print(line.decode().rstrip("\n"), flush=True)
    events += 1
    if events == leave_after:
        conn.close()
        sys.exit(0)
print("end", flush=True)
`

// runPython runs a Python client script with args, within a liveness
// bound, and returns its output.
func runPython(t *testing.T, script string, args ...string) (string, error) {
	t.Helper()
	cmd := exec.Command(python, append([]string{"-c", script}, args...)...)
	timer := time.AfterFunc(60*time.Second, func() { cmd.Process.Kill() })
	defer timer.Stop()
	out, err := cmd.CombinedOutput()
	return string(out), err
}

// Server-Sent Events through Apache over HTTP/1.1, read by Python clients
// line by line as they arrive:
//   - examples/python/stream_clock.py's 5 events, in order, and the end of
//     the stream (the last chunk);
//   - the first event of a stream_clock.py stream of 100000 events, after
//     which the client leaves: the worker gets a cancel notice, so the
//     stream was still going (its last event not sent) when the client had
//     its first; the stream that ended gets none;
//   - sse_gate_worker.py's events, each sent only once the client has read
//     the one before (gatedPythonClient, as for zmq-gateway).
func TestSSEPythonClientThroughApache(t *testing.T) {
	clock := startStreamClock(t, "--count", "5", "--interval", "0.05")
	long := startStreamClock(t, "--count", "100000", "--interval", "0.05")
	gate := startGateWorker(t)
	h := startHTTPD(t, httpdParams{MPM: "event", Extra: fmt.Sprintf(`	<Location /clock>
		SetHandler zmq
		ZmqBackend %s
		ZmqNotices on
	</Location>
	<Location /long>
		SetHandler zmq
		ZmqBackend %s
		ZmqNotices on
	</Location>
	<Location /gate>
		SetHandler zmq
		ZmqBackend %s
	</Location>
`, clock.Endpoint, long.Endpoint, gate.Endpoint)})

	t.Run("StreamClock", func(t *testing.T) {
		out, err := runPython(t, sseLinePythonClient, h.URL+"/clock")
		if want := "data: 0\ndata: 1\ndata: 2\ndata: 3\ndata: 4\nend\n"; err != nil || out != want {
			t.Errorf("the Python client: %v\n%s\nwant:\n%s", err, out, want)
		}
	})
	t.Run("FirstBeforeLast", func(t *testing.T) {
		out, err := runPython(t, sseLinePythonClient, h.URL+"/long", "1")
		if err != nil || out != "data: 0\n" {
			t.Fatalf("the Python client, leaving after the first event: %v\n%s", err, out)
		}
		checkFor(t, 10*time.Second, func() error {
			if !strings.Contains(long.Output.String(), "cancel ") {
				return fmt.Errorf("the worker of the long stream printed no cancel notice: %q", long.Output.String())
			}
			return nil
		})
		if strings.Contains(clock.Output.String(), "cancel ") {
			t.Errorf("a stream that ended normally got a cancel notice: %q", clock.Output.String())
		}
	})
	t.Run("EachEventBeforeTheNext", func(t *testing.T) {
		out, err := runPython(t, gatedPythonClient, h.URL)
		if want := "data: 0\ndata: 1\ndata: 2\ndata: 3\ndata: 4\nend\n"; err != nil || out != want {
			t.Errorf("the Python client: %v\n%s\nwant:\n%s", err, out, want)
		}
	})
}
