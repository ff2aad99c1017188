package test

import (
	"bufio"
	"encoding/json"
	"fmt"
	"io"
	"net"
	"net/http"
	"os"
	"path/filepath"
	"strconv"
	"strings"
	"sync"
	"syscall"
	"testing"
	"time"

	"github.com/modzmq/modzmq/internal/zmqtest"
)

// The Apache children's pools of worker connections (mod_zmq/golib/fast.c):
// a connection the worker closed is closed and dropped once the pool is
// next used, and an endpoint never has more connections than it had
// requests in flight at once.

// tcpToPort lists the TCP connections on this host whose remote port is
// port (so the connecting side's): their state (/proc/net/tcp: 01
// ESTABLISHED, 08 CLOSE_WAIT) by socket inode.
func tcpToPort(t *testing.T, port int) map[string]string {
	t.Helper()
	out := map[string]string{}
	for _, name := range []string{"/proc/net/tcp", "/proc/net/tcp6"} {
		b, err := os.ReadFile(name)
		if err != nil {
			if name == "/proc/net/tcp" {
				t.Fatal(err)
			}
			continue
		}
		for _, line := range strings.Split(string(b), "\n")[1:] {
			f := strings.Fields(line)
			if len(f) < 10 {
				continue
			}
			i := strings.LastIndexByte(f[2], ':')
			if p, err := strconv.ParseUint(f[2][i+1:], 16, 16); err == nil && int(p) == port {
				out[f[9]] = f[3]
			}
		}
	}
	return out
}

// closeWait counts the connections to port in CLOSE_WAIT: closed by the
// worker, not yet by us.
func closeWait(t *testing.T, port int) int {
	n := 0
	for _, st := range tcpToPort(t, port) {
		if st == "08" {
			n++
		}
	}
	return n
}

// childConns counts, for each child process of httpd, its connections to
// port that are established or in CLOSE_WAIT.
func childConns(t *testing.T, h *httpd, port int) map[int]int {
	t.Helper()
	conns := tcpToPort(t, port)
	out := map[int]int{}
	procs, _ := filepath.Glob("/proc/[0-9]*/stat")
	for _, stat := range procs {
		b, err := os.ReadFile(stat)
		if err != nil {
			continue
		}
		// pid (comm) state ppid ...: comm may hold spaces, not ")".
		f := strings.Fields(string(b[strings.LastIndexByte(string(b), ')')+1:]))
		if len(f) < 2 || f[1] != h.pid() {
			continue
		}
		dir := filepath.Dir(stat)
		pid, _ := strconv.Atoi(filepath.Base(dir))
		fds, _ := os.ReadDir(filepath.Join(dir, "fd"))
		out[pid] = 0
		for _, fd := range fds {
			link, _ := os.Readlink(filepath.Join(dir, "fd", fd.Name()))
			inode, ok := strings.CutPrefix(link, "socket:[")
			if st := conns[strings.TrimSuffix(inode, "]")]; ok && (st == "01" || st == "08") {
				out[pid]++
			}
		}
	}
	if len(out) == 0 {
		t.Fatalf("no children of httpd %s", h.pid())
	}
	return out
}

func portOf(t *testing.T, ep string) int {
	t.Helper()
	p, err := strconv.Atoi(ep[strings.LastIndexByte(ep, ':')+1:])
	if err != nil {
		t.Fatalf("endpoint %s: %v", ep, err)
	}
	return p
}

// checkBound fails when a child holds more than max connections to port.
func checkBound(t *testing.T, h *httpd, port, max int, when string) {
	t.Helper()
	for pid, n := range childConns(t, h, port) {
		if n > max {
			t.Errorf("%s: child %d holds %d connections to the worker, want at most %d", when, pid, n, max)
		}
	}
}

// After a worker is killed and started again on its port, the connections
// the old one closed are closed in every child, for the ZMTP connections
// and for libzmq's (CURVE), and requests go on succeeding.
func TestPoolDropsConnectionsOfRestartedWorker(t *testing.T) {
	const conc = 8
	for _, curve := range []bool{false, true} {
		name := map[bool]string{false: "zmtp", true: "libzmq-curve"}[curve]
		t.Run(name, func(t *testing.T) {
			var args []string
			opts := faultOptions
			if curve {
				requireBuilt(t, "zmq-gateway")
				dir := t.TempDir()
				os.Chmod(dir, 0o755)
				os.Chmod(filepath.Dir(dir), 0o755) // children run as the Apache User
				worker, bridgeKey := keygen(t, dir, "worker"), keygen(t, dir, "bridge")
				args = []string{"--curve-secret", worker + ".key_secret"}
				opts += fmt.Sprintf("\n\t\tZmqCurve %s %s", worker+".key", bridgeKey+".key_secret")
			}
			w := startPyWorker(t, "w0", args...)
			port := portOf(t, w.Endpoint)
			h := startHTTPD(t, httpdParams{MPM: "event", Extra: fmt.Sprintf("\t<Location /p>\n\t\tSetHandler zmq\n\t\tZmqBackend %s\n\t\t%s\n\t</Location>",
				w.Endpoint, opts)})
			h.expect(`\[zmq:(warn|error|info)\] .*MODZMQ01(0[0-9]|1[0-9]|2[0-9])`)
			l := startLoad(t, h.URL+"/p/x", conc)
			l.waitOK(t, "warm-up", 200, 20*time.Second)
			for i := 1; i <= 4; i++ {
				w.signal(t, syscall.SIGKILL)
				w.cmd.Wait()
				w = startPyWorkerAt(t, fmt.Sprintf("w%d", i), w.Endpoint, args...)
				l.waitOK(t, fmt.Sprintf("after restart %d", i), 200, 30*time.Second)
			}
			t.Logf("after the restarts: %d in CLOSE_WAIT; per child %v", closeWait(t, port), childConns(t, h, port))
			checkFor(t, 15*time.Second, func() error {
				if n := closeWait(t, port); n > 0 {
					return fmt.Errorf("%d connections to the restarted worker still in CLOSE_WAIT", n)
				}
				return nil
			})
			// Each child: a connection per request in flight, the watch
			// connection, and one more for a request arriving meanwhile.
			checkBound(t, h, port, conc+2, "under load")
			l.waitOK(t, "at the end", 100, 20*time.Second)
			l.finish(t)
		})
	}
}

// keepAlive is one HTTP/1.1 connection to Apache, held by one child.
type keepAlive struct {
	c net.Conn
	r *bufio.Reader
}

func (k *keepAlive) get(t *testing.T, path string) int {
	k.c.SetDeadline(time.Now().Add(30 * time.Second))
	if _, err := fmt.Fprintf(k.c, "GET %s HTTP/1.1\r\nHost: one.localhost\r\n\r\n", path); err != nil {
		t.Errorf("GET %s: %v", path, err)
		return 0
	}
	resp, err := http.ReadResponse(k.r, nil)
	if err != nil {
		t.Errorf("GET %s: %v", path, err)
		return 0
	}
	io.Copy(io.Discard, resp.Body)
	resp.Body.Close()
	return resp.StatusCode
}

// A worker that heartbeats drops the pooled connections that answered none
// of its PINGs while idle; nothing tells the watch connection (it answers
// them), so only a look at the idle connections finds them closed. After a
// burst fills the pools, requests one at a time through every keep-alive
// connection (so every child that pooled connections takes from its pool)
// leave none in CLOSE_WAIT, and each child keeps what one request needs.
func TestPoolDropsIdleConnectionsTheWorkerClosed(t *testing.T) {
	const conc = 16
	w := startPyWorker(t, "hb", "--router", "--heartbeat", "100")
	port := portOf(t, w.Endpoint)
	h := startHTTPD(t, httpdParams{MPM: "event", Extra: fmt.Sprintf("\t<Location /hb>\n\t\tSetHandler zmq\n\t\tZmqBackend %s\n\t\tZmqTimeout 3\n\t</Location>", w.Endpoint)})
	conns := make([]*keepAlive, conc)
	for i := range conns {
		c, err := net.Dial("tcp", fmt.Sprintf("127.0.0.1:%d", h.Port))
		if err != nil {
			t.Fatal(err)
		}
		t.Cleanup(func() { c.Close() })
		conns[i] = &keepAlive{c: c, r: bufio.NewReader(c)}
	}
	var wg sync.WaitGroup
	for i, k := range conns {
		wg.Add(1)
		go func() {
			defer wg.Done()
			for j := range 100 {
				if st := k.get(t, fmt.Sprintf("/hb/x?b=%d-%d", i, j)); st != 200 {
					t.Errorf("burst: status %d", st)
					return
				}
			}
		}()
	}
	wg.Wait()
	t.Logf("after the burst: per child %v", childConns(t, h, port))
	n := 0
	checkFor(t, 15*time.Second, func() error {
		for range 2 * conc {
			if st := conns[n%conc].get(t, fmt.Sprintf("/hb/x?n=%d", n)); st != 200 {
				return fmt.Errorf("one at a time: status %d", st)
			}
			n++
		}
		// Once the worker dropped the idle connections: none in CLOSE_WAIT,
		// and each child keeps one connection for the request, the watch's,
		// and one the worker may have closed since the last look.
		if cw := closeWait(t, port); cw > 0 {
			return fmt.Errorf("%d connections the worker closed still in CLOSE_WAIT", cw)
		}
		for pid, c := range childConns(t, h, port) {
			if c > 3 {
				return fmt.Errorf("child %d holds %d connections to the worker, want at most 3", pid, c)
			}
		}
		return nil
	})
}

// A worker whose watch connection keeps dropping (it answers requests but
// no ZMTP PING, so with heartbeats on the endpoint flaps up and down) while
// requests come one at a time: through several flaps, no child holds more
// connections than one request needs, however often Go and the fast path
// take turns.
func TestPoolBoundWhileEndpointFlaps(t *testing.T) {
	w := zmqtest.StartRaw(t, nil, func(c net.Conn, req [][]byte) {
		// [request-id, "", "MZMQ/1", method, target, ...]: the load checks
		// the target in the echo.
		body, _ := json.Marshal(echo{Worker: "raw", Target: string(req[4])})
		c.Write(zmqtest.Message(req[0], nil, []byte("200"), []byte("Content-Type: application/json\r\n"), body))
	})
	port := portOf(t, w.Endpoint)
	h := startHTTPD(t, httpdParams{MPM: "event", Extra: fmt.Sprintf("\t<Location /p>\n\t\tSetHandler zmq\n\t\tZmqBackend %s\n\t\t%s\n\t</Location>",
		w.Endpoint, faultOptions)})
	h.expect(`\[zmq:(warn|error|info)\] .*MODZMQ01(0[0-9]|1[0-9]|2[0-9])`)
	l := startLoad(t, h.URL+"/p/x", 1)
	most := 0
	checkFor(t, 30*time.Second, func() error {
		for _, n := range childConns(t, h, port) {
			most = max(most, n)
		}
		if lost := strings.Count(h.errorLog(), "MODZMQ0121: "+w.Endpoint+": connection lost"); lost < 5 {
			return fmt.Errorf("the endpoint flapped %d times, want 5", lost)
		}
		return nil
	})
	l.finish(t)
	t.Logf("at most %d connections to the worker in one child", most)
	// The request's connection and the watch's, or a watch reconnecting.
	if most > 3 {
		t.Errorf("a child held %d connections to the worker while requests came one at a time, want at most 3", most)
	}
	if l.ok.Load() == 0 {
		t.Errorf("no request succeeded")
	}
}
