package test

import (
	"bufio"
	"bytes"
	"fmt"
	"io"
	"net"
	"net/http"
	"os"
	"os/exec"
	"path/filepath"
	"regexp"
	"strings"
	"testing"
	"time"

	"github.com/gorilla/websocket"
)

// WebSockets through the real zmq-gateway, in HTTP mode and in stream
// mode (each test runs its body for both, forEachGatewayMode), to the
// example workers, with three independent clients: Go (gorilla/websocket,
// and raw sockets for frames no library sends), Python (websockets,
// Debian's python3-websockets) and Node.js (ws, from test/node).

// startWSGatewayProc starts zmq-gateway in mode (as startGatewayProc takes
// it) with the routes these tests use: ws_echo.py on /ws, on
// /small with 1000-byte messages, and on /plain without websocket: true;
// the Go worker on /go.
func startWSGatewayProc(t *testing.T, mode string) (g *gatewayProc, echo, goWorker *worker) {
	t.Helper()
	requireBuilt(t, "zmq-gateway", "wsworker")
	echo = startPyScript(t, "examples/python/ws_echo.py")
	port := freePort(t)
	ep := fmt.Sprintf("tcp://127.0.0.1:%d", port)
	goWorker = startListening(t, port, ep, buildPath("wsworker"), "-bind", ep)
	g = startGatewayProc(t, mode, fmt.Sprintf(`  - prefix: /ws
    backend: [%[1]s]
    websocket: true
  - prefix: /small
    backend: [%[1]s]
    websocket: true
    websocket_max_message: 1000
  - prefix: /plain
    backend: [%[1]s]
  - prefix: /go
    backend: [%[2]s]
    websocket: true
`, echo.Endpoint, ep))
	return g, echo, goWorker
}

var gwClosedLine = regexp.MustCompile(`(?m)^closed \S+ (\d+)$`)

// gwCloses counts the "closed <connection-id> <code>" lines of a worker, by code.
func gwCloses(w *worker) map[string]int {
	n := map[string]int{}
	for _, m := range gwClosedLine.FindAllStringSubmatch(w.Output.String(), -1) {
		n[m[1]]++
	}
	return n
}

// gwExpectClose waits until the worker has printed one more close with code
// than it had in before.
func gwExpectClose(t *testing.T, w *worker, before map[string]int, code int) {
	t.Helper()
	c := fmt.Sprint(code)
	checkFor(t, 10*time.Second, func() error {
		if gwCloses(w)[c] > before[c] {
			return nil
		}
		return fmt.Errorf("the worker printed no new close %d:\n%s", code, w.Output)
	})
}

func gwWSDial(t *testing.T, url string) *websocket.Conn {
	t.Helper()
	d := websocket.Dialer{HandshakeTimeout: 10 * time.Second}
	c, resp, err := d.Dial(url, nil)
	if err != nil {
		t.Fatalf("dial %s: %v (%+v)", url, err, resp)
	}
	t.Cleanup(func() { c.Close() })
	c.SetReadDeadline(time.Now().Add(60 * time.Second))
	return c
}

func gwWSCloseCode(t *testing.T, c *websocket.Conn) int {
	t.Helper()
	for {
		if _, _, err := c.ReadMessage(); err != nil {
			if ce, ok := err.(*websocket.CloseError); ok {
				return ce.Code
			}
			t.Fatalf("the connection ended without a close: %v", err)
		}
	}
}

// The Go client: every message kind and size, the worker's close and the
// client's, and the Go worker on the same gateway.
func TestWebSocketGatewayGoClient(t *testing.T) { forEachGatewayMode(t, testWebSocketGatewayGoClient) }

func testWebSocketGatewayGoClient(t *testing.T, mode string) {
	g, echo, goWorker := startWSGatewayProc(t, mode)
	ws := "ws://" + g.Addr
	big := bytes.Repeat([]byte("abcdefgh"), 2<<20) // 16 MiB
	for _, path := range []string{"/ws", "/go"} {
		w := echo
		if path == "/go" {
			w = goWorker
		}
		c := gwWSDial(t, ws+path+"/x")
		for i, m := range []struct {
			kind int
			data []byte
		}{{websocket.TextMessage, []byte("héllo")}, {websocket.BinaryMessage, []byte{0, 255, 1}},
			{websocket.TextMessage, []byte{}}, {websocket.BinaryMessage, []byte{}}, {websocket.BinaryMessage, big}, {websocket.TextMessage, big}} {
			if err := c.WriteMessage(m.kind, m.data); err != nil {
				t.Fatalf("%s: message %d: %v", path, i, err)
			}
			kind, data, err := c.ReadMessage()
			if err != nil || kind != m.kind || !bytes.Equal(data, m.data) {
				t.Fatalf("%s: message %d came back as kind %d, %d bytes, %v", path, i, kind, len(data), err)
			}
		}
		before := gwCloses(w)
		c.WriteMessage(websocket.TextMessage, []byte("close"))
		if code := gwWSCloseCode(t, c); code != 4000 {
			t.Errorf("%s: the worker's close reached the client as %d, want 4000", path, code)
		}
		gwExpectClose(t, w, before, 4000)

		c = gwWSDial(t, ws+path+"/x")
		before = gwCloses(w)
		c.WriteMessage(websocket.CloseMessage, websocket.FormatCloseMessage(1000, "bye"))
		gwExpectClose(t, w, before, 1000)
		if code := gwWSCloseCode(t, c); code != 1000 {
			t.Errorf("%s: the gateway answered the client's close with %d", path, code)
		}
	}

	// A route without websocket: true relays the handshake as a plain GET.
	d := websocket.Dialer{HandshakeTimeout: 10 * time.Second}
	_, resp, err := d.Dial(ws+"/plain/x", nil)
	if err == nil || resp == nil || resp.StatusCode != 200 {
		t.Fatalf("a handshake on a plain route: %v %+v", err, resp)
	}
	if b, _ := io.ReadAll(resp.Body); string(b) != "not a WebSocket handshake: GET /plain/x\n" {
		t.Errorf("a handshake on a plain route reached the worker as %q", b)
	}
	if strings.Contains(g.Stderr.String(), "level=ERROR") {
		t.Errorf("errors in the gateway's log:\n%s", g.Stderr)
	}
}

// gwRawClient is a WebSocket client on a bare socket.
type gwRawClient struct {
	t  *testing.T
	nc net.Conn
	br *bufio.Reader
}

func gwRawDial(t *testing.T, addr, path string) *gwRawClient {
	t.Helper()
	nc, err := net.Dial("tcp", addr)
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { nc.Close() })
	nc.SetDeadline(time.Now().Add(30 * time.Second))
	fmt.Fprintf(nc, "GET %s HTTP/1.1\r\nHost: x\r\nUpgrade: websocket\r\nConnection: Upgrade\r\n"+
		"Sec-WebSocket-Version: 13\r\nSec-WebSocket-Key: dGhlIHNhbXBsZSBub25jZQ==\r\n\r\n", path)
	br := bufio.NewReader(nc)
	resp, err := http.ReadResponse(br, nil)
	if err != nil || resp.StatusCode != 101 || resp.Header.Get("Sec-WebSocket-Accept") != "s3pPLMBiTxaQ9kYGzzhZRbK+xOo=" {
		t.Fatalf("raw handshake: %v %+v", err, resp)
	}
	return &gwRawClient{t: t, nc: nc, br: br}
}

// send writes one frame: fin, opcode, masked unless unmasked.
func (c *gwRawClient) send(fin bool, op byte, payload []byte, unmasked bool) {
	b := []byte{op, 0}
	if fin {
		b[0] |= 0x80
	}
	switch n := len(payload); {
	case n < 126:
		b[1] = byte(n)
	case n < 1<<16:
		b[1] = 126
		b = append(b, byte(n>>8), byte(n))
	default:
		b[1] = 127
		for i := 7; i >= 0; i-- {
			b = append(b, byte(n>>(8*i)))
		}
	}
	p := append([]byte(nil), payload...)
	if !unmasked {
		b[1] |= 0x80
		mask := []byte{9, 8, 7, 6}
		b = append(b, mask...)
		for i := range p {
			p[i] ^= mask[i%4]
		}
	}
	if _, err := c.nc.Write(append(b, p...)); err != nil {
		c.t.Fatalf("raw send: %v", err)
	}
}

// next reads one frame from the gateway: opcode and payload.
func (c *gwRawClient) next() (byte, []byte) {
	c.t.Helper()
	var h [2]byte
	if _, err := io.ReadFull(c.br, h[:]); err != nil {
		c.t.Fatalf("raw read: %v", err)
	}
	if h[1]&0x80 != 0 {
		c.t.Fatal("the gateway sent a masked frame")
	}
	n := int(h[1] & 0x7f)
	if n >= 126 {
		ext := make([]byte, map[int]int{126: 2, 127: 8}[n])
		io.ReadFull(c.br, ext)
		n = 0
		for _, x := range ext {
			n = n<<8 | int(x)
		}
	}
	p := make([]byte, n)
	if _, err := io.ReadFull(c.br, p); err != nil {
		c.t.Fatalf("raw read: %v", err)
	}
	return h[0] & 0x0f, p
}

// closeCode reads up to the gateway's close and returns its code.
func (c *gwRawClient) closeCode() int {
	c.t.Helper()
	for {
		if op, p := c.next(); op == 8 {
			if len(p) < 2 {
				return 1005
			}
			return int(p[0])<<8 | int(p[1])
		}
	}
}

// Frames no library sends, from a raw socket: a fragmented message with
// pings between the fragments, and each breach with its close code, which
// the worker hears too; and a client that vanishes (1006).
func TestWebSocketGatewayRawClient(t *testing.T) {
	forEachGatewayMode(t, testWebSocketGatewayRawClient)
}

func testWebSocketGatewayRawClient(t *testing.T, mode string) {
	g, echo, _ := startWSGatewayProc(t, mode)
	c := gwRawDial(t, g.Addr, "/ws")
	c.send(false, 1, []byte("fr\xc3"), false)
	c.send(true, 9, []byte("p1"), false)
	c.send(false, 0, []byte("\xa9g"), false)
	c.send(true, 9, []byte("p2"), false)
	c.send(true, 0, []byte("ment"), false)
	for _, want := range []string{"10 p1", "10 p2", "1 frégment"} { // pongs, then the text whole
		if op, p := c.next(); fmt.Sprintf("%d %s", op, p) != want {
			t.Errorf("got opcode %d %q, want %q", op, p, want)
		}
	}
	for _, tt := range []struct {
		name, path string
		send       func(c *gwRawClient)
		code       int
	}{
		{"an unmasked frame", "/ws", func(c *gwRawClient) { c.send(true, 1, []byte("x"), true) }, 1002},
		{"a reserved opcode", "/ws", func(c *gwRawClient) { c.send(true, 3, nil, false) }, 1002},
		{"invalid UTF-8", "/ws", func(c *gwRawClient) { c.send(true, 1, []byte("ok \xc0\xaf"), false) }, 1007},
		{"a message over websocket_max_message", "/small", func(c *gwRawClient) { c.send(true, 2, make([]byte, 1001), false) }, 1009},
	} {
		before := gwCloses(echo)
		c := gwRawDial(t, g.Addr, tt.path)
		tt.send(c)
		if code := c.closeCode(); code != tt.code {
			t.Errorf("%s: the client got close %d, want %d", tt.name, code, tt.code)
		}
		gwExpectClose(t, echo, before, tt.code)
	}
	before := gwCloses(echo)
	c = gwRawDial(t, g.Addr, "/ws")
	c.send(true, 1, []byte("hi"), false)
	c.next()
	c.nc.Close()
	gwExpectClose(t, echo, before, 1006)

	// The worker goes away while a WebSocket is open: the client gets 1011
	// as soon as the gateway's connection to the worker drops, and the
	// gateway logs why (stream mode with its own code).
	ws := gwWSDial(t, "ws://"+g.Addr+"/ws/x")
	ws.WriteMessage(websocket.TextMessage, []byte("hi"))
	ws.ReadMessage()
	echo.cmd.Process.Kill()
	ws.SetReadDeadline(time.Now().Add(10 * time.Second))
	if code := gwWSCloseCode(t, ws); code != 1011 {
		t.Errorf("a worker that went away: the client got %d, want 1011", code)
	}
	code := "MODZMQ0132"
	if mode == "stream" {
		code = "MODZMQ0307"
	}
	checkFor(t, 10*time.Second, func() error {
		if !strings.Contains(g.Stderr.String(), code) {
			return fmt.Errorf("no %s line for the lost worker:\n%s", code, g.Stderr)
		}
		return nil
	})
}

const gwPythonClient = `
import asyncio, sys, websockets

async def main(base):
    async with websockets.connect(base + "/ws/py", max_size=None) as ws:
        for m in ["héllo", b"\x00\x01\xff", "", b"", b"z" * (16 << 20), "t" * (16 << 20)]:
            await ws.send(m)
            back = await ws.recv()
            assert back == m and type(back) == type(m), (type(back), len(back))
        print("ok echo", flush=True)

        async def fragments():
            yield "fra"
            pong = await ws.ping(b"between")
            yield "gmen"
            await ws.ping(b"again")
            yield "t"
        await ws.send(fragments())
        assert await ws.recv() == "fragment"
        print("ok fragmented", flush=True)
        await ws.send("close")
        try:
            await ws.recv()
        except websockets.ConnectionClosed as e:
            print("closed by the worker", e.code, flush=True)
    async with websockets.connect(base + "/ws/py") as ws:
        await ws.send("x")
        await ws.recv()
        await ws.close(1000)
        print("closed by the client", ws.close_code, flush=True)
    async with websockets.connect(base + "/small/py") as ws:
        await ws.send(b"y" * 1001)
        try:
            await ws.recv()
        except websockets.ConnectionClosed as e:
            print("oversized", e.code, flush=True)

asyncio.run(main(sys.argv[1]))
`

const gwNodeClient = `
const WebSocket = require("ws");
const base = process.argv[2];
const open = (path) => new Promise((resolve, reject) => {
  const ws = new WebSocket(base + path, { maxPayload: 0 });
  ws.binaryType = "nodebuffer";
  ws.once("open", () => resolve(ws));
  ws.once("error", reject);
});
const next = (ws) => new Promise((resolve, reject) => {
  ws.once("message", (data, isBinary) => resolve({ data, isBinary }));
  ws.once("close", (code) => reject(new Error("closed " + code)));
});
const closed = (ws) => new Promise((resolve) => ws.once("close", (code) => resolve(code)));
(async () => {
  let ws = await open("/ws/node");
  const big = Buffer.alloc(16 << 20, 0x41);
  for (const [m, binary] of [["héllo", false], [Buffer.from([0, 1, 255]), true], ["", false], [Buffer.alloc(0), true], [big, true], [big.toString(), false]]) {
    const got = next(ws);
    ws.send(m, { binary });
    const { data, isBinary } = await got;
    if (isBinary !== binary || !Buffer.from(m).equals(data)) throw new Error("echo of " + m.length + " bytes came back as " + data.length);
  }
  console.log("ok echo");
  const frag = next(ws);
  ws.send("fra", { fin: false });
  ws.ping("between");
  ws.send("gmen", { fin: false });
  ws.ping("again");
  ws.send("t", { fin: true });
  const f = await frag;
  if (f.data.toString() !== "fragment" || f.isBinary) throw new Error("fragmented: " + f.data);
  console.log("ok fragmented");
  let c = closed(ws);
  ws.send("close");
  console.log("closed by the worker " + await c);
  ws = await open("/ws/node");
  const got = next(ws);
  ws.send("x");
  await got;
  c = closed(ws);
  ws.close(1000);
  console.log("closed by the client " + await c);
  ws = await open("/small/node");
  c = closed(ws);
  ws.send(Buffer.alloc(1001));
  console.log("oversized " + await c);
})().catch((e) => { console.log("error " + e.message); process.exit(1); });
`

// The Python and Node.js clients, each against ws_echo.py through the
// gateway: every message kind, empty and 16 MiB messages, a fragmented
// message with pings between the fragments, the worker's close (4000) and
// the client's (1000, which the worker prints), and an oversized message
// (1009).
func TestWebSocketGatewayPythonAndNodeClients(t *testing.T) {
	forEachGatewayMode(t, testWebSocketGatewayPythonAndNodeClients)
}

func testWebSocketGatewayPythonAndNodeClients(t *testing.T, mode string) {
	g, echo, _ := startWSGatewayProc(t, mode)
	dir := t.TempDir()
	want := "ok echo\nok fragmented\nclosed by the worker 4000\nclosed by the client 1000\noversized 1009\n"
	for _, client := range []struct {
		name, file, source string
		cmd                func(file string) *exec.Cmd
	}{
		{"python websockets", "client.py", gwPythonClient, func(f string) *exec.Cmd { return exec.Command(python, f, "ws://"+g.Addr) }},
		{"node ws", "client.js", gwNodeClient, func(f string) *exec.Cmd {
			cmd := exec.Command("node", f, "ws://"+g.Addr)
			cmd.Env = append(os.Environ(), "NODE_PATH="+filepath.Join(root, "test", "node", "node_modules"))
			return cmd
		}},
	} {
		t.Run(client.name, func(t *testing.T) {
			f := filepath.Join(dir, client.file)
			if err := os.WriteFile(f, []byte(client.source), 0o644); err != nil {
				t.Fatal(err)
			}
			before := gwCloses(echo)
			cmd := client.cmd(f)
			done := make(chan struct{})
			time.AfterFunc(120*time.Second, func() {
				select {
				case <-done:
				default:
					cmd.Process.Kill()
				}
			})
			out, err := cmd.CombinedOutput()
			close(done)
			if err != nil || string(out) != want {
				t.Fatalf("%s: %v\n%s\nwant:\n%s", client.name, err, out, want)
			}
			gwExpectClose(t, echo, before, 1000)
			gwExpectClose(t, echo, before, 1009)
		})
	}
}
