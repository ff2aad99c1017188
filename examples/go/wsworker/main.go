// Command wsworker is a pure-Go MZMQ/1 WebSocket worker (docs/PROTOCOL.md,
// "WebSockets") on the worker package (ZMTP without libzmq, a goroutine per
// front connection) that accepts every WebSocket handshake (choosing the first subprotocol offered, if
// any) and echoes each message with its type, counting credits both ways
// as examples/python/ws_echo.py does. A text message "close" is answered by
// closing with 4000. It prints "closed <connection-id> <code>" for every
// close it learns of. A plain request gets a plain 200.
//
//	go run ./examples/go/wsworker -bind tcp://127.0.0.1:5560
//
// A WebSocket's messages all come over the front connection it was opened
// on, so each connection keeps its own WebSockets, and its goroutine alone
// touches them.
package main

import (
	"bytes"
	"context"
	"flag"
	"fmt"
	"log"
	"os"
	"os/signal"
	"strconv"
	"sync"
	"syscall"
	"time"

	"github.com/modzmq/modzmq/worker"
)

// partCost is what every WebSocket message costs beyond its bytes.
const partCost = 64

// webSocket is one accepted WebSocket: its envelope, the credit the front
// granted, and the echoes waiting for it.
type webSocket struct {
	env    [][]byte
	connID string
	credit int64
	out    []echo
}

// echo is a message to send back, with the cost of the client's message it
// answers, granted back once it is out.
type echo struct {
	kind, data []byte
	cost       int64
}

// metaValue returns the value of a "name: value" meta line.
func metaValue(meta []byte, name string) ([]byte, bool) {
	for line := range bytes.SplitSeq(meta, []byte("\r\n")) {
		if k, v, ok := bytes.Cut(line, []byte(":")); ok && string(k) == name {
			return bytes.TrimSpace(v), true
		}
	}
	return nil, false
}

func main() {
	bind := flag.String("bind", "tcp://127.0.0.1:5560", "endpoint to bind")
	flag.Parse()

	var mu sync.Mutex
	conns := map[*worker.Conn]map[string]*webSocket{} // each front connection's WebSockets, by request id
	srv, err := worker.Listen(*bind, worker.HandlerFunc(func(c *worker.Conn, msg [][]byte) {
		mu.Lock()
		sockets := conns[c]
		switch {
		case msg == nil:
			delete(conns, c)
		case sockets == nil:
			sockets = map[string]*webSocket{}
			conns[c] = sockets
		}
		mu.Unlock()
		if msg != nil {
			serve(c, sockets, msg)
		}
	}), nil)
	if err != nil {
		log.Fatalf("listen %s: %v", *bind, err)
	}
	// SIGTERM or ^C: the messages read are handled, the WebSockets end (the
	// fronts close them with 1011), then the worker exits; a second signal
	// ends it at once.
	ctx, stop := signal.NotifyContext(context.Background(), os.Interrupt, syscall.SIGTERM)
	context.AfterFunc(ctx, stop)
	if err := srv.Run(ctx, 10*time.Second); err != nil {
		log.Fatal(err)
	}
}

// serve handles one message from a front connection whose WebSockets are
// sockets.
func serve(c *worker.Conn, sockets map[string]*webSocket, msg [][]byte) {
	send := func(env [][]byte, frames ...[]byte) {
		if err := c.SendMessage(env, frames...); err != nil {
			log.Printf("send: %v", err)
		}
	}
	// flush sends the echoes the credit allows, granting back each one's
	// client message.
	flush := func(ws *webSocket) {
		for len(ws.out) > 0 && ws.credit >= int64(len(ws.out[0].data))+partCost {
			e := ws.out[0]
			ws.out = ws.out[1:]
			ws.credit -= int64(len(e.data)) + partCost
			send(ws.env, e.kind, e.data)
			send(ws.env, []byte("@credit"), strconv.AppendInt(nil, e.cost, 10))
		}
	}
	i := worker.Delimiter(msg)
	if i < 0 || len(msg)-i-1 != 6 || string(msg[i+1]) != "MZMQ/1" {
		return
	}
	env, f := msg[:i+1:i+1], msg[i+1:]
	method, target, meta, body := string(f[1]), f[2], f[4], f[5]
	id, _ := metaValue(meta, "request-id")
	ws := sockets[string(id)]
	switch {
	case func() bool { v, _ := metaValue(meta, "websocket"); return string(v) == "1" }():
		credit, _ := metaValue(meta, "stream-credits")
		n, _ := strconv.ParseInt(string(credit), 10, 64)
		connID, ok := metaValue(meta, "connection-id")
		if !ok {
			connID = id
		}
		sockets[string(id)] = &webSocket{env: clone(env), connID: string(connID), credit: n}
		headers := []byte{}
		if offered, ok := metaValue(meta, "websocket-protocols"); ok {
			first, _, _ := bytes.Cut(offered, []byte(","))
			headers = fmt.Appendf(headers, "Sec-WebSocket-Protocol: %s\r\n", bytes.TrimSpace(first))
		}
		send(env, []byte("@accept"), headers)
	case ws != nil && method == "@text" && string(body) == "close":
		send(env, []byte("@ws-close"), []byte("4000"))
		fmt.Printf("closed %s 4000\n", ws.connID)
		delete(sockets, string(id))
	case ws != nil && (method == "@text" || method == "@binary"):
		ws.out = append(ws.out, echo{kind: bytes.Clone(f[1]), data: bytes.Clone(body), cost: int64(len(body)) + partCost})
		flush(ws)
	case ws != nil && method == "@credit":
		n, _ := strconv.ParseInt(string(target), 10, 64)
		ws.credit += n
		flush(ws)
	case ws != nil && method == "@ws-close":
		fmt.Printf("closed %s %s\n", ws.connID, target)
		delete(sockets, string(id))
	case len(method) > 0 && method[0] != '@':
		send(env, []byte("200"), []byte("Content-Type: text/plain\r\n"),
			fmt.Appendf(nil, "not a WebSocket handshake: %s %s\n", method, target))
	}
}

// clone copies frames out of the connection's read buffer.
func clone(frames [][]byte) [][]byte {
	out := make([][]byte, len(frames))
	for i, f := range frames {
		out[i] = bytes.Clone(f)
	}
	return out
}
