package stream

import (
	"io"
	"net"
	"net/http"
	"regexp"
	"strconv"
	"strings"
	"testing"
	"time"

	"github.com/modzmq/modzmq/gateway"
	"github.com/modzmq/modzmq/internal/zmqtest"
)

// Stream mode writes the HTTP mode's access log line for each request,
// when its answer ends, with id= the request id its worker got ("-" when
// it went to no worker): a plain reply, a 504, a streamed reply, a worker
// lost while it held the request (whose MODZMQ0110 line names it too), a
// 404, and a request whose client left first (499).
func TestAccessLog(t *testing.T) {
	ids := make(chan string, 16) // "target id", in the order the workers got them
	ep := zmqtest.ROUTER(t, func(m [][]byte, reply func([][]byte)) {
		target := string(m[5])
		ids <- target + " " + string(m[1])
		switch target[strings.LastIndexByte(target, '/'):] {
		case "/plain":
			reply(append(m[:3:3], []byte("200"), nil, []byte("hello")))
		case "/events":
			reply(zmqtest.Part(m[:3], "@stream", "200", ""))
			reply(zmqtest.Part(m[:3], "@data", "data: 1\n\n"))
			reply(zmqtest.Part(m[:3], "@end", "data: 2\n\n"))
		}
		// /slow, /left: never answered
	})
	lost := zmqtest.StartRaw(t, nil, func(c net.Conn, req [][]byte) {
		ids <- string(req[4]) + " " + string(req[0])
		c.Close() // as a worker killed while it holds the request
	})
	access := &zmqtest.Buffer{}
	_, addr, logs := startServerLog(t, Options{AccessLog: access},
		gateway.Route{Prefix: "/lost", Backend: []string{lost.Endpoint}, Heartbeat: "off"},
		gateway.Route{Prefix: "/app", Backend: []string{ep}, Timeout: gateway.Duration(time.Second)})
	t.Cleanup(func() {
		if t.Failed() {
			t.Logf("access log:\n%s", access)
		}
	})
	url := "http://" + addr
	expect := func(method, target string, status int, bytes string, worker bool) {
		t.Helper()
		id := "-"
		if worker {
			got := zmqtest.WaitFor(t, ids, "the request "+target+" at its worker")
			wt, wid, _ := strings.Cut(got, " ")
			if !strings.HasSuffix(target, wt) {
				t.Fatalf("the worker got %q, want %s", got, target)
			}
			id = wid
		}
		line := regexp.MustCompile(`(?m)^127\.0\.0\.1 - - \[[^]]+\] "` + method + ` ` + regexp.QuoteMeta(target) + ` HTTP/1\.1" ` +
			strconv.Itoa(status) + ` ` + bytes + ` \d+\.\d{6} id=` + regexp.QuoteMeta(id) + `\n`)
		for deadline := time.Now().Add(10 * time.Second); !line.MatchString(access.String()); time.Sleep(10 * time.Millisecond) {
			if time.Now().After(deadline) {
				t.Fatalf("no access log line for %s %s: %d, %s bytes, id=%s", method, target, status, bytes, id)
			}
		}
	}
	for _, tc := range []struct {
		target string
		status int
		bytes  string
		worker bool
	}{
		{"/app/plain", 200, "5", true},
		{"/app/slow", 504, "20", true},
		{"/app/events", 200, "18", true},
		{"/lost/x", 503, "24", true},
		{"/nowhere", 404, "14", false},
	} {
		resp, err := http.Post(url+tc.target, "text/plain", strings.NewReader("body"))
		if err != nil {
			t.Fatalf("%s: %v", tc.target, err)
		}
		io.Copy(io.Discard, resp.Body)
		resp.Body.Close()
		if resp.StatusCode != tc.status {
			t.Errorf("%s: %d, want %d", tc.target, resp.StatusCode, tc.status)
		}
		expect("POST", tc.target, tc.status, tc.bytes, tc.worker)
	}
	want := regexp.MustCompile(`MODZMQ0110: worker lost: .*\(request [0-9a-f]+-\d+ to ` + regexp.QuoteMeta(lost.Endpoint) + `\)`)
	if !want.MatchString(logs.String()) {
		t.Errorf("the log lacks the lost worker's line naming its request")
	}

	// Pipelined requests, relayed at once, one line each; the second's
	// client leaves before its answer: 499.
	c := dial(t, addr)
	c.send("GET /app/plain HTTP/1.1\r\nHost: x\r\n\r\nGET /app/left HTTP/1.1\r\nHost: x\r\n\r\n")
	byTarget := map[string]string{}
	for i := 0; i < 2; i++ {
		target, id, _ := strings.Cut(zmqtest.WaitFor(t, ids, "the pipelined requests at the worker"), " ")
		byTarget[target[strings.LastIndexByte(target, '/'):]] = id
	}
	c.head()
	c.c.Close()
	for target, want := range map[string]string{
		"/plain": `"GET /app/plain HTTP/1\.1" 200 5 \d+\.\d{6} id=` + regexp.QuoteMeta(byTarget["/plain"]) + `\n`,
		"/left":  `"GET /app/left HTTP/1\.1" 499 0 \d+\.\d{6} id=` + regexp.QuoteMeta(byTarget["/left"]) + `\n`,
	} {
		line := regexp.MustCompile(want)
		for deadline := time.Now().Add(10 * time.Second); !line.MatchString(access.String()); time.Sleep(10 * time.Millisecond) {
			if time.Now().After(deadline) {
				t.Fatalf("no access log line for the pipelined %s: want %s", target, want)
			}
		}
	}
	if n := strings.Count(access.String(), "\n"); n != 7 {
		t.Errorf("%d access log lines, want 7", n)
	}
}
