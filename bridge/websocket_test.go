package bridge

import (
	"context"
	"errors"
	"fmt"
	"strings"
	"testing"
	"time"
	"unsafe"

	"github.com/modzmq/modzmq/internal/zmqtest"
)

// wsWorker is a libzmq ROUTER worker for WebSocket tests: it accepts a
// handshake to /ok (choosing subprotocol "chat" when offered), refuses one
// to /no with 403, echoes messages with their kind, and closes with 4000 on
// the text "close". What it learns is reported on got.
func wsWorker(t *testing.T, got chan<- string) string {
	return zmqtest.ROUTER(t, func(msg [][]byte, reply func([][]byte)) {
		i := 0
		for len(msg[i]) != 0 {
			i++
		}
		env, f := msg[:i+1], msg[i+1:]
		method, target, meta, body := string(f[1]), string(f[2]), string(f[4]), f[5]
		switch {
		case strings.Contains(meta, "websocket: 1\r\n") && target == "/ok":
			got <- "meta " + meta
			h := ""
			if strings.Contains(meta, "websocket-protocols: ") {
				h = "Sec-WebSocket-Protocol: chat\r\n"
			}
			reply(zmqtest.Part(env, "@accept", h+"X-Hello: 1\r\n"))
		case strings.Contains(meta, "websocket: 1\r\n") && target == "/bad":
			reply(zmqtest.Part(env, "@accept", "Sec-WebSocket-Protocol: nope\r\n"))
		case strings.Contains(meta, "websocket: 1\r\n"):
			reply(zmqtest.Part(env, "403", "", "go away"))
		case method == "@text" && string(body) == "close":
			reply(zmqtest.Part(env, "@ws-close", "4000", "asked"))
		case method == "@text" && string(body) == "garbage":
			reply(zmqtest.Part(env, "@nonsense", "x"))
		case method == "@text" || method == "@binary":
			reply(zmqtest.Part(env, method, string(body)))
			reply(zmqtest.Part(env, "@credit", fmt.Sprint(len(body)+PartCost)))
		case method == "@ws-close":
			got <- fmt.Sprintf("closed %s %s", target, body)
		}
	})
}

func openWS(t *testing.T, c *Client, target, protocols string) (Response, error) {
	t.Helper()
	meta := ""
	if protocols != "" {
		meta = "websocket-protocols: " + protocols + "\r\n"
	}
	return c.Do(context.Background(), &Request{Method: []byte("GET"), Target: []byte(target), Meta: []byte(meta),
		WebSocket: true, MaxMessage: 1 << 20, StreamWindow: 64 << 10}, 5*time.Second)
}

func recvWS(t *testing.T, ws *WebSocket) Message {
	t.Helper()
	deadline := time.Now().Add(10 * time.Second)
	for time.Now().Before(deadline) {
		m, ok, err := ws.Recv(100 * time.Millisecond)
		if err != nil {
			t.Fatalf("Recv: %v", err)
		}
		if ok {
			return m
		}
	}
	t.Fatal("no message from the worker")
	return Message{}
}

// A handshake the worker accepts: its meta, the accept's headers and
// subprotocol, messages echoed both ways within credit, the worker's close,
// and the counters; a refused handshake is a plain reply.
func TestWebSocketThroughTheBridge(t *testing.T) {
	got := make(chan string, 10)
	c := newTestClient(t, Options{Endpoints: []string{wsWorker(t, got)}, MaxStreams: 1})

	resp, err := openWS(t, c, "/ok", "chat, other")
	if err != nil || resp.Status != 101 || resp.WebSocket == nil {
		t.Fatalf("handshake: %d %v %v", resp.Status, resp.WebSocket, err)
	}
	ws := resp.WebSocket
	meta := <-got
	for _, want := range []string{"websocket: 1\r\n", "websocket-max-message: 1048576\r\n", "stream-credits: 1114176\r\n", "websocket-protocols: chat, other\r\n"} {
		if !strings.Contains(meta, want) {
			t.Errorf("the handshake's meta lacks %q:\n%s", want, meta)
		}
	}
	if p, err := CheckAccept(resp.Headers, "chat, other"); p != "chat" || err != nil || !strings.Contains(string(resp.Headers), "X-Hello: 1\r\n") {
		t.Errorf("the accept: headers %q, subprotocol %q, %v", resp.Headers, p, err)
	}
	if ws.SendCredit() != 64<<10+1<<20+PartCost {
		t.Errorf("the front may send the worker %d bytes at first, want %d", ws.SendCredit(), 64<<10+1<<20+PartCost)
	}

	// Over MaxStreams: a second handshake is refused before the worker sees it.
	if _, err := openWS(t, c, "/ok", ""); !errors.Is(err, ErrOverload) {
		t.Errorf("a second WebSocket over MaxStreams 1: %v, want ErrOverload", err)
	}

	// The worker here counts no credit: the largest message goes first,
	// whose credit the front grants back before the next.
	for i, m := range []Message{{Kind: Binary, Data: make([]byte, 1<<20)}, {Kind: Text, Data: []byte("héllo")}, {Kind: Binary, Data: []byte{0, 1, 2}}} {
		for deadline := time.Now().Add(10 * time.Second); ws.SendCredit() < int64(len(m.Data))+PartCost; { // the worker's grants come by Recv
			if m, ok, err := ws.Recv(10 * time.Millisecond); ok || err != nil || time.Now().After(deadline) {
				t.Fatalf("waiting for credit: %+v %v", m, err)
			}
		}
		if err := ws.Send(m); err != nil {
			t.Fatalf("Send %d: %v", i, err)
		}
		back := recvWS(t, ws)
		if back.Kind != m.Kind || string(back.Data) != string(m.Data) {
			t.Fatalf("message %d came back as kind %d, %d bytes", i, back.Kind, len(back.Data))
		}
	}
	if err := ws.Send(Message{Kind: Binary, Data: make([]byte, 1<<20+1)}); err == nil {
		t.Error("a message over MaxMessage went out")
	}
	if err := ws.Send(Message{Kind: Text, Data: []byte("close")}); err != nil {
		t.Fatal(err)
	}
	if m := recvWS(t, ws); m.Kind != Close || m.Code != 4000 || string(m.Reason) != "asked" {
		t.Errorf("the worker's close: %+v", m)
	}
	if err := ws.Send(Message{Kind: Text, Data: []byte("x")}); !errors.Is(err, ErrWebSocketClosed) {
		t.Errorf("Send after the worker's close: %v", err)
	}
	ws.Close(CloseNormal, nil)
	select {
	case s := <-got:
		t.Errorf("the worker heard %q after closing the WebSocket itself", s)
	case <-time.After(100 * time.Millisecond):
	}
	ss := c.StreamStats()
	if ss.Open.Load() != 0 || ss.Buffered.Load() != 0 || ss.Ends[EndNormal].Load() != 1 || ss.Parts.Load() != 3 || ss.BodyParts.Load() != 4 {
		t.Errorf("counters: open %d, buffered %d, normal ends %d, parts %d to and %d from the client",
			ss.Open.Load(), ss.Buffered.Load(), ss.Ends[EndNormal].Load(), ss.Parts.Load(), ss.BodyParts.Load())
	}

	// Refused, and a subprotocol not offered.
	if resp, err := openWS(t, c, "/no", ""); err != nil || resp.Status != 403 || resp.WebSocket != nil || string(resp.Body) != "go away" {
		t.Errorf("a refused handshake: %d %q %v", resp.Status, resp.Body, err)
	}
	resp, err = openWS(t, c, "/bad", "chat")
	if err != nil {
		t.Fatal(err)
	}
	if _, err := CheckAccept(resp.Headers, "chat"); !errors.Is(err, ErrProtocol) {
		t.Errorf("an accept choosing a subprotocol not offered: %v", err)
	}
	resp.WebSocket.Close(CloseProtocolError, nil)
	if ss.Open.Load() != 0 {
		t.Errorf("%d open after every WebSocket closed", ss.Open.Load())
	}
}

// The client's close and a client that vanishes reach the worker as
// @ws-close with their codes; a worker's garbage breaks that WebSocket only.
func TestWebSocketClosesReachTheWorker(t *testing.T) {
	got := make(chan string, 10)
	c := newTestClient(t, Options{Endpoints: []string{wsWorker(t, got)}})
	open := func() *WebSocket {
		resp, err := openWS(t, c, "/ok", "")
		if err != nil || resp.WebSocket == nil {
			t.Fatalf("handshake: %d %v", resp.Status, err)
		}
		<-got // its meta
		return resp.WebSocket
	}
	ws := open()
	ws.Send(Message{Kind: Close, Code: CloseNormal, Reason: []byte("bye")})
	ws.Close(CloseNormal, nil)
	if s := <-got; s != "closed 1000 bye" {
		t.Errorf("the worker heard %q, want the client's close", s)
	}
	ws = open()
	ws.Close(CloseAbnormal, nil)
	if s := <-got; s != "closed 1006 " {
		t.Errorf("the worker heard %q, want 1006 for a client that vanished", s)
	}
	ws = open()
	if err := ws.Send(Message{Kind: Text, Data: []byte("garbage")}); err != nil {
		t.Fatal(err)
	}
	var err error
	for i := 0; i < 100 && err == nil; i++ {
		_, _, err = ws.Recv(100 * time.Millisecond)
	}
	if !errors.Is(err, ErrProtocol) {
		t.Errorf("a worker's unknown message: %v, want ErrProtocol", err)
	}
	ws.Close(CloseInternalError, nil)
	if s := <-got; s != "closed 1011 " {
		t.Errorf("the worker heard %q, want 1011 after its garbage", s)
	}
	if n := c.StreamStats().Ends[EndBroken].Load(); n != 1 {
		t.Errorf("%d WebSockets counted broken, want 1", n)
	}
	if _, err := openWS(t, c, "/ok", ""); err != nil {
		t.Errorf("a WebSocket after a broken one: %v", err)
	}
}

// A front that relays a WebSocket's messages by itself (Flow) hands it
// back once Owed reaches GrantAt: where grant first finds credit due, as
// each message from the worker moves its cost from credit to owed.
func TestWebSocketGrantAt(t *testing.T) {
	for window := int64(0); window < 700; window += 7 {
		for _, maxMsg := range []int64{0, 1, 100, 500} {
			for k := int64(0); k < 800; k += 13 { // credit + owed: what a message moves leaves it
				at := (&WebSocket{window: window, max: maxMsg, credit: k}).grantAt()
				for owed := int64(0); owed <= k; owed++ {
					ws := &WebSocket{window: window, max: maxMsg, credit: k - owed, owed: owed}
					if due := ws.grantDue(); due != (owed >= at) {
						t.Fatalf("window %d, max %d, credit %d, owed %d: grant due %v, but GrantAt is %d",
							window, maxMsg, k-owed, owed, due, at)
					}
					if ws.grantAt() != at {
						t.Fatalf("window %d, max %d: GrantAt %d with owed %d, %d with none", window, maxMsg, ws.grantAt(), owed, at)
					}
				}
			}
		}
	}
}

// An accepted WebSocket's connection keeps none of the handshake's bytes
// (its meta; its frames' target, headers and body), nor of the messages it
// sent: an idle WebSocket holds its request id only. What it sends goes in
// the connection's frames, the array the request went in.
func TestWebSocketKeepsNoRequestBytes(t *testing.T) {
	got := make(chan string, 10)
	c := newTestClient(t, Options{Endpoints: []string{wsWorker(t, got)}})
	resp, err := openWS(t, c, "/ok", "chat")
	if err != nil || resp.WebSocket == nil {
		t.Fatalf("handshake: %d %v", resp.Status, err)
	}
	<-got // its meta
	ws := resp.WebSocket
	holds := func(when string) {
		t.Helper()
		if ws.p.meta != nil {
			t.Errorf("%s: the connection keeps a meta of %d bytes", when, len(ws.p.meta))
		}
		for i, f := range ws.p.frames[:cap(ws.p.frames)] {
			if f != nil {
				t.Errorf("%s: frame %d of the connection still holds %q", when, i, f)
			}
		}
		if !strings.HasPrefix(string(ws.p.id), string(c.prefix)) {
			t.Errorf("%s: the request id is %q", when, ws.p.id)
		}
	}
	holds("after the accept")
	if cap(ws.p.frames) < 8 {
		t.Fatalf("the connection's frames have room for %d", cap(ws.p.frames))
	}
	array := unsafe.SliceData(ws.p.frames)
	if err := ws.Send(Message{Kind: Text, Data: []byte("hello")}); err != nil {
		t.Fatal(err)
	}
	if m := recvWS(t, ws); m.Kind != Text || string(m.Data) != "hello" {
		t.Fatalf("the echo: %+v", m)
	}
	holds("after a message each way")
	if unsafe.SliceData(ws.p.frames) != array {
		t.Error("the WebSocket sent its message in frames of its own, not the connection's")
	}
	ws.Close(CloseNormal, nil)
	if s := <-got; s != "closed 1000 " {
		t.Errorf("the worker heard %q, want the close", s)
	}
}
