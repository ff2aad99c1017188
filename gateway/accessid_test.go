package gateway

import (
	"io"
	"net"
	"net/http"
	"regexp"
	"strconv"
	"strings"
	"testing"
	"time"

	"github.com/modzmq/modzmq/internal/zmqtest"
)

// The access log line of each request ends with id= the request id its
// worker got in its meta (Apache's %{zmq-request-id}n), "-" when it went to
// no worker: a plain reply, a 504, a held stream, a worker lost while it
// held the request, and a 404. The error line of the lost worker
// (MODZMQ0110) names the request as well.
func TestAccessLogCarriesTheRequestID(t *testing.T) {
	ids := make(chan string, 16) // "target id", in the order the worker got them
	ep := zmqtest.ROUTER(t, func(m [][]byte, reply func([][]byte)) {
		target := string(m[5])
		ids <- target + " " + string(m[1])
		switch target[strings.LastIndexByte(target, '/'):] {
		case "/plain":
			reply(append(m[:3:3], []byte("200"), nil, []byte("hello")))
		case "/events":
			reply(zmqtest.Part(m[:3], "@stream", "200", ""))
			reply(zmqtest.Part(m[:3], "@end", "data: 1\n\n"))
		}
		// /slow: never answered
	})
	lost := zmqtest.StartRaw(t, nil, func(c net.Conn, req [][]byte) {
		ids <- string(req[4]) + " " + string(req[0])
		c.Close() // as a worker killed while it holds the request
	})
	url, access, errs := startStreamGateway(t, &Config{Routes: []Route{
		{Prefix: "/lost", Backend: []string{lost.Endpoint}, Heartbeat: "off"},
		{Prefix: "/app", Backend: []string{ep}, Timeout: Duration(300 * time.Millisecond)},
	}})
	t.Cleanup(func() {
		if t.Failed() {
			t.Logf("access log:\n%s\nerror log:\n%s", access, errs)
		}
	})
	for _, tc := range []struct {
		target string
		status int
		bytes  string
		worker bool // the request reaches a worker
	}{
		{"/app/plain", 200, "5", true},
		{"/app/slow", 504, "20", true},
		{"/app/events", 200, "9", true},
		{"/lost/x", 503, "24", true},
		{"/nowhere", 404, `\d+`, false},
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
		id := "-"
		if tc.worker {
			got := zmqtest.WaitFor(t, ids, "the request "+tc.target+" at its worker")
			target, wid, _ := strings.Cut(got, " ")
			if !strings.HasSuffix(tc.target, target) {
				t.Fatalf("the worker got %q, want %s", got, tc.target)
			}
			id = wid
		}
		line := regexp.MustCompile(`(?m)^127\.0\.0\.1 - - \[[^]]+\] "POST ` + regexp.QuoteMeta(tc.target) + ` HTTP/1\.1" ` +
			strconv.Itoa(tc.status) + ` ` + tc.bytes + ` \d+\.\d{6} id=` + regexp.QuoteMeta(id) + `\n`)
		checkFor(t, func() bool { return line.MatchString(access.String()) }, "the access log line of %s with id=%s", tc.target, id)
	}
	if want := regexp.MustCompile(`MODZMQ0110: worker lost: .*\(request [0-9a-f]+-\d+ to ` + regexp.QuoteMeta(lost.Endpoint) + `\)`); !want.MatchString(errs.String()) {
		t.Errorf("the error log lacks the lost worker's line naming its request:\n%s", errs)
	}
}

// Formatting a line into a buffer with room costs no allocation: stream
// mode formats each line into one buffer of its own.
func TestAppendAccessLineAllocatesNothing(t *testing.T) {
	e := AccessEntry{Host: "127.0.0.1", Method: "GET", URI: "/a?b=\"c\"", Proto: "HTTP/1.1", Start: time.Now(),
		Status: 200, Bytes: 12, ID: []byte("0123456789abcdef-42")}
	buf := make([]byte, 0, 512)
	if n := testing.AllocsPerRun(100, func() { buf = AppendAccessLine(buf[:0], &e) }); n != 0 {
		t.Errorf("%v allocations per line", n)
	}
	want := regexp.MustCompile(`^127\.0\.0\.1 - - \[[^]]+\] "GET /a\?b=\\"c\\" HTTP/1\.1" 200 12 \d+\.\d{6} id=0123456789abcdef-42\n$`)
	if !want.Match(buf) {
		t.Errorf("the line %q", buf)
	}
}
