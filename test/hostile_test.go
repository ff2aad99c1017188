package test

import (
	"bytes"
	"fmt"
	"net"
	"net/http"
	"os"
	"path/filepath"
	"strconv"
	"strings"
	"testing"
	"time"

	"github.com/modzmq/modzmq/internal/zmqtest"
)

// Hostile workers: raw-socket ZMTP peers (internal/zmqtest.Raw) that answer
// with exactly the bytes a test chooses. Each front must answer every such
// request with the right status within its timeout, log it with a code,
// keep serving, and keep its memory within a bound derived from its limits.

const (
	hostileMaxReply = 1 << 20 // ZmqMaxReply / max_reply of the limited routes
	hostileTimeout  = 3       // seconds: ZmqTimeout / timeout
	// rssBound is what a front may grow by over the whole test. The limited
	// routes bound a reply to 1 MiB + 64 KiB; the unlimited one is only
	// trickled to. Without the bounds one case alone grew a front by a GiB.
	rssBound = 256 << 20
)

// hostileServe answers each request by its target's last path segment.
func hostileServe(r *zmqtest.Raw) func(c net.Conn, req [][]byte) {
	return func(c net.Conn, req [][]byte) {
		if len(req) < 5 {
			return
		}
		id, target := req[0], string(req[4])
		head := func(more ...[]byte) []byte { // [id, "", more...], every frame with MORE set
			b := append(zmqtest.Frame(1, id), zmqtest.Frame(1, nil)...)
			for _, f := range more {
				b = append(b, zmqtest.Frame(1, f)...)
			}
			return b
		}
		ok := zmqtest.Message(id, nil, []byte("200"), []byte("ok"))
		switch target[strings.LastIndexByte(target, '/')+1:] {
		case "ok":
			c.Write(ok)
		case "endless-frames": // a status, then 64 KiB frames with MORE set, for ever
			c.Write(head([]byte("200")))
			r.Flood(c, zmqtest.Frame(1, make([]byte, 64<<10)), 8<<30, 0)
		case "many-empty": // empty frames with MORE set, flat out
			c.Write(head())
			r.Flood(c, bytes.Repeat(zmqtest.Frame(1, nil), 4096), 1<<30, 0)
		case "big-message": // five frames, each under the limit, together over it
			c.Write(append(head([]byte("200"), make([]byte, 600<<10)), zmqtest.Frame(0, make([]byte, 600<<10))...))
		case "huge-claim": // a body frame claiming 1 TiB, then a trickle of its bytes
			c.Write(append(head([]byte("200")), zmqtest.FrameHeader(0, 1<<40)...))
			r.Flood(c, make([]byte, 512), 1<<40, 5*time.Millisecond)
		case "ping-flood": // PINGs flat out and no reply: the deadline must hold
			r.Flood(c, bytes.Repeat(zmqtest.Frame(4, []byte("\x04PING\x00\x00")), 512), 1<<40, 0)
		case "error-then-ok": // an ERROR command mid-session, ignored as libzmq does, then the reply
			c.Write(append(zmqtest.Frame(4, []byte("\x05ERROR\x03bad")), ok...))
		case "command-amid": // a PING between the frames of the reply
			c.Write(append(append(zmqtest.Frame(1, id), zmqtest.Frame(4, []byte("\x04PING\x00\x00"))...),
				zmqtest.Message(nil, []byte("200"), []byte("ok"))...))
		}
	}
}

// hostileCase is one request to a hostile worker and the status it must get.
type hostileCase struct {
	path   string
	status int
	log    string // what the front's log must say (a code), or ""
}

var hostileCases = []hostileCase{
	{"/h/ok", 200, ""},
	{"/h/endless-frames", 502, "MODZMQ0103"},
	{"/h/many-empty", 502, "MODZMQ0103"},
	{"/h/big-message", 502, "MODZMQ0103"},
	{"/h/ping-flood", 504, "MODZMQ0102"},
	{"/h/error-then-ok", 200, ""},
	{"/h/command-amid", 200, ""},
	{"/h0/huge-claim", 504, "MODZMQ0102"},
	{"/h0/ok", 200, ""},
	{"/badready-value/ok", 503, ""},
	{"/badready-name/ok", 503, ""},
	{"/bigready/ok", 200, ""},
}

// hostileWorkers starts the raw workers: one speaking proper ZMTP, and one
// for each READY variant.
func hostileWorkers(t *testing.T) map[string]string {
	t.Helper()
	start := func(ready []byte) string {
		var r *zmqtest.Raw
		r = zmqtest.StartRaw(t, ready, func(c net.Conn, req [][]byte) { hostileServe(r)(c, req) })
		return r.Endpoint
	}
	router := zmqtest.Property("Socket-Type", []byte("ROUTER"))
	return map[string]string{
		"h": start(nil),
		// A value length past the command's end, and a name cut short:
		// libzmq 4.3.4 refuses both.
		"badready-value": start(zmqtest.ZMTPHello(append(router, 5, 'X', '-', 'a', 'b', 'c', 0, 0, 1, 0, 'v'))),
		"badready-name":  start(zmqtest.ZMTPHello(append(router, 9, 'X', '-', 'a'))),
		// A 70 KB property: libzmq accepts it.
		"bigready": start(zmqtest.ZMTPHello(append(router, zmqtest.Property("X-Big", make([]byte, 70000))...))),
	}
}

// hostileRun sends every case to base and checks statuses; logged returns
// the front's log so far.
func hostileRun(t *testing.T, base string, logged func() string) {
	t.Helper()
	c := &http.Client{Timeout: time.Duration(hostileTimeout+20) * time.Second} // a hang detector, not a timing check
	for _, tc := range hostileCases {
		resp, err := c.Get(base + tc.path)
		if err != nil {
			t.Errorf("%s: %v (no answer)", tc.path, err)
			continue
		}
		resp.Body.Close()
		if resp.StatusCode != tc.status {
			t.Errorf("%s: %d, want %d", tc.path, resp.StatusCode, tc.status)
		}
		// The front survived and still serves.
		if resp, err := c.Get(base + "/h/ok"); err != nil || resp.StatusCode != 200 {
			t.Errorf("after %s: %v %v", tc.path, resp, err)
		} else {
			resp.Body.Close()
		}
	}
	for _, tc := range hostileCases {
		if tc.log != "" && !strings.Contains(logged(), tc.log) {
			t.Errorf("%s: no %s line in the log", tc.path, tc.log)
		}
	}
}

// rss returns a process's resident memory in bytes.
func rss(t *testing.T, pid int) int64 {
	b, err := os.ReadFile(fmt.Sprintf("/proc/%d/status", pid))
	if err != nil {
		return 0
	}
	for _, l := range strings.Split(string(b), "\n") {
		if f := strings.Fields(l); len(f) >= 2 && f[0] == "VmRSS:" {
			n, _ := strconv.ParseInt(f[1], 10, 64)
			return n << 10
		}
	}
	return 0
}

// children returns the pids of ppid's children.
func children(ppid string) []int {
	var out []int
	dirs, _ := filepath.Glob("/proc/[0-9]*/stat")
	for _, d := range dirs {
		b, err := os.ReadFile(d)
		if err != nil {
			continue
		}
		s := string(b)
		f := strings.Fields(s[strings.LastIndexByte(s, ')')+1:])
		if len(f) > 1 && f[1] == ppid {
			pid, _ := strconv.Atoi(filepath.Base(filepath.Dir(d)))
			out = append(out, pid)
		}
	}
	return out
}

func TestHostileWorkersApache(t *testing.T) {
	eps := hostileWorkers(t)
	var extra strings.Builder
	for _, loc := range []struct {
		path, ep string
		maxReply int
	}{{"/h", eps["h"], hostileMaxReply}, {"/h0", eps["h"], 0}, {"/badready-value", eps["badready-value"], hostileMaxReply},
		{"/badready-name", eps["badready-name"], hostileMaxReply}, {"/bigready", eps["bigready"], hostileMaxReply}} {
		fmt.Fprintf(&extra, "\t<Location %s>\n\t\tSetHandler zmq\n\t\tZmqBackend %s\n\t\tZmqMaxReply %d\n\t\tZmqTimeout %d\n\t\tZmqHeartbeat off\n\t</Location>\n",
			loc.path, loc.ep, loc.maxReply, hostileTimeout)
	}
	h := startHTTPD(t, httpdParams{MPM: "event", Extra: extra.String()})
	h.expect(`MODZMQ0103: `)
	h.expect(`MODZMQ0102: `)
	h.expect(`MODZMQ0101: .*(` + eps["badready-value"] + `|` + eps["badready-name"] + `)`)
	h.expect(`MODZMQ0123: .*(` + eps["badready-value"] + `|` + eps["badready-name"] + `)`)
	h.expect(`MODZMQ0121: .*(` + eps["badready-value"] + `|` + eps["badready-name"] + `)`)
	before := map[int]int64{}
	for _, pid := range children(h.pid()) {
		before[pid] = rss(t, pid)
	}
	hostileRun(t, h.URL, h.errorLog)
	for _, pid := range children(h.pid()) {
		if grew := rss(t, pid) - before[pid]; grew > rssBound {
			t.Errorf("Apache child %d grew by %d MiB", pid, grew>>20)
		}
	}
}

func TestHostileWorkersGateway(t *testing.T) {
	eps := hostileWorkers(t)
	routes := ""
	for _, r := range []struct {
		prefix, ep string
		maxReply   int
	}{{"/h/", eps["h"], hostileMaxReply}, {"/h0/", eps["h"], 0}, {"/badready-value/", eps["badready-value"], hostileMaxReply},
		{"/badready-name/", eps["badready-name"], hostileMaxReply}, {"/bigready/", eps["bigready"], hostileMaxReply}} {
		routes += fmt.Sprintf("  - prefix: %s\n    backend: [%s]\n    max_reply: %d\n    timeout: %ds\n    heartbeat: off\n",
			r.prefix, r.ep, r.maxReply, hostileTimeout)
	}
	for _, mode := range []string{"", "stream"} {
		t.Run("mode="+mode, func(t *testing.T) {
			g := startGatewayProc(t, mode, routes)
			pid := g.cmd.Process.Pid
			before := rss(t, pid)
			hostileRun(t, g.URL, g.Stderr.String)
			if grew := rss(t, pid) - before; grew > rssBound {
				t.Errorf("zmq-gateway %s grew by %d MiB", mode, grew>>20)
			}
		})
	}
}

// CURVE workers (pyzmq, libzmq) whose replies break the bounds: the
// bridge's own CurveZMQ client refuses them by the same rules, on both
// fronts, as soon as they are broken.
func TestHostileCurveWorkers(t *testing.T) {
	requireBuilt(t, "zmq-gateway")
	dir := t.TempDir()
	os.Chmod(dir, 0o755)
	os.Chmod(filepath.Dir(dir), 0o755) // children run as the Apache User
	worker, bridgeKey := keygen(t, dir, "worker"), keygen(t, dir, "bridge")
	w := startPyWorker(t, "curve", "--router", "--curve-secret", worker+".key_secret")
	cases := map[string]int{"/c/ok": 200, "/c/manyframes": 502, "/c/bigframes": 502}
	check := func(t *testing.T, base string, logged func() string) {
		for path, want := range cases {
			resp, err := (&http.Client{Timeout: 30 * time.Second}).Get(base + path)
			if err != nil {
				t.Errorf("%s: %v", path, err)
				continue
			}
			resp.Body.Close()
			if resp.StatusCode != want {
				t.Errorf("%s: %d, want %d", path, resp.StatusCode, want)
			}
		}
		if !strings.Contains(logged(), "MODZMQ0103") {
			t.Errorf("no MODZMQ0103 line for the refused replies")
		}
	}
	t.Run("apache", func(t *testing.T) {
		h := startHTTPD(t, httpdParams{MPM: "event", Extra: fmt.Sprintf(
			"\t<Location /c>\n\t\tSetHandler zmq\n\t\tZmqBackend %s\n\t\tZmqCurve %s %s\n\t\tZmqMaxReply %d\n\t\tZmqTimeout %d\n\t</Location>\n",
			w.Endpoint, worker+".key", bridgeKey+".key_secret", hostileMaxReply, hostileTimeout)})
		h.expect(`MODZMQ0103: `)
		before := map[int]int64{}
		for _, pid := range children(h.pid()) {
			before[pid] = rss(t, pid)
		}
		check(t, h.URL, h.errorLog)
		for _, pid := range children(h.pid()) {
			if grew := rss(t, pid) - before[pid]; grew > rssBound {
				t.Errorf("Apache child %d grew by %d MiB", pid, grew>>20)
			}
		}
	})
	t.Run("gateway", func(t *testing.T) {
		g := startGatewayProc(t, "", fmt.Sprintf("  - prefix: /c/\n    backend: [%s]\n    curve_server_cert: %s\n    curve_client_cert: %s\n    max_reply: %d\n",
			w.Endpoint, worker+".key", bridgeKey+".key_secret", hostileMaxReply))
		check(t, g.URL, g.Stderr.String)
	})
}
