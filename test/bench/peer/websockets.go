package main

// The WebSocket benchmark's peers (`modzmq-bench -only websockets`):
//
//	peer -mode ws -listen tcp://127.0.0.1:5555   MZMQ/1 WebSocket echo worker (libzmq ROUTER)
//	peer -mode wsecho -listen 127.0.0.1:8093     Go WebSocket echo server (gorilla/websocket),
//	                                             behind Apache's mod_proxy_http/mod_proxy_wstunnel
//
// The worker accepts every handshake and echoes each message with its type,
// counting credits as docs/PROTOCOL.md ("WebSockets") asks and as
// examples/go/wsworker does, with one difference: it grants the front
// credit back the way the fronts grant theirs (bridge.WebSocket.grant),
// once what it owes reaches a quarter of the window, or at once when the
// front's credit left would not carry a message of the largest size,
// rather than after every message. One goroutine owns the socket.

import (
	"log"
	"net/http"
	"strconv"

	"github.com/gorilla/websocket"
	zmq "github.com/pebbe/zmq4"
)

const wsPartCost = 64 // what every WebSocket message costs beyond its bytes

// wsConn is one accepted WebSocket of the worker.
type wsConn struct {
	env     [][]byte
	window  int64 // stream-credits: the credit each side starts with
	maxCost int64 // websocket-max-message + wsPartCost
	credit  int64 // what the worker may still send the front
	left    int64 // what the front may still send the worker, as the worker counts it
	owed    int64 // handled, not yet granted back
	out     [][2][]byte
}

func serveWebSockets(listen string) {
	s, err := zmq.NewSocket(zmq.ROUTER)
	if err != nil {
		log.Fatal(err)
	}
	s.SetSndhwm(0) // echoes are paced by credit, never dropped
	s.SetRcvhwm(0)
	s.SetBacklog(4096) // Apache opens a connection per WebSocket: 1,000 at once
	if err := s.Bind(listen); err != nil {
		log.Fatal(err)
	}
	send := zmqSender(s)
	sockets := map[string]*wsConn{} // by request id
	for {
		msg, err := s.RecvMessageBytes(0)
		if err == nil {
			handleWS(sockets, msg, send, false)
		}
	}
}

// handleWS handles one message for the WebSockets in sockets (by request
// id), sending with send; borrowed says msg's frames are the caller's only
// for the call (what is kept is copied).
func handleWS(sockets map[string]*wsConn, msg [][]byte, send func(env [][]byte, frames ...[]byte), borrowed bool) {
	i := 0
	for i < len(msg) && len(msg[i]) != 0 {
		i++
	}
	if len(msg)-i-1 != 6 || string(msg[i+1]) != "MZMQ/1" {
		return
	}
	keep := func(b []byte) []byte {
		if borrowed {
			return append([]byte(nil), b...)
		}
		return b
	}
	env, f := msg[:i+1:i+1], msg[i+1:]
	method, target, meta, body := f[1], f[2], f[4], f[5]
	id, _ := metaValue(meta, "request-id")
	ws := sockets[id]
	switch {
	case ws == nil && isHandshake(meta):
		c, _ := metaValue(meta, "stream-credits")
		m, _ := metaValue(meta, "websocket-max-message")
		n, _ := strconv.ParseInt(c, 10, 64)
		mm, _ := strconv.ParseInt(m, 10, 64)
		kept := make([][]byte, len(env))
		for i, e := range env {
			kept[i] = keep(e)
		}
		sockets[id] = &wsConn{env: kept, window: n, maxCost: mm + wsPartCost, credit: n, left: n}
		send(kept, []byte("@accept"), nil)
	case ws != nil && (string(method) == "@text" || string(method) == "@binary"):
		cost := int64(len(body)) + wsPartCost
		ws.left -= cost
		ws.owed += cost
		if len(ws.out) == 0 && ws.credit >= cost {
			ws.credit -= cost
			send(ws.env, method, body)
		} else {
			ws.out = append(ws.out, [2][]byte{keep(method), keep(body)})
		}
		ws.flush(func(frames ...[]byte) { send(ws.env, frames...) })
	case ws != nil && string(method) == "@credit":
		n, _ := strconv.ParseInt(string(target), 10, 64)
		ws.credit += n
		ws.flush(func(frames ...[]byte) { send(ws.env, frames...) })
	case ws != nil && string(method) == "@ws-close":
		delete(sockets, id)
	case len(method) > 0 && method[0] != '@':
		send(env, []byte("200"), []byte("Content-Type: text/plain\r\n"), []byte("not a WebSocket handshake\n"))
	}
}

// flush sends what the worker's credit allows, and grants what the handled
// messages earned as the fronts do: in quarters of the window, or at once
// when the front could not send a message of the largest size with what it
// has left.
func (ws *wsConn) flush(send func(frames ...[]byte)) {
	for len(ws.out) > 0 && ws.credit >= int64(len(ws.out[0][1]))+wsPartCost {
		e := ws.out[0]
		ws.out = ws.out[1:]
		ws.credit -= int64(len(e[1])) + wsPartCost
		send(e[0], e[1])
	}
	if len(ws.out) == 0 {
		ws.out = nil
	}
	if ws.owed > 0 && (ws.owed >= ws.window/4 || ws.left < ws.maxCost) {
		ws.left += ws.owed
		send([]byte("@credit"), strconv.AppendInt(nil, ws.owed, 10))
		ws.owed = 0
	}
}

func isHandshake(meta []byte) bool {
	v, _ := metaValue(meta, "websocket")
	return v == "1"
}

// serveWSEcho is a plain Go WebSocket echo server: each connection's
// goroutine reads a message and writes it back with its type.
func serveWSEcho(listen string) {
	up := websocket.Upgrader{CheckOrigin: func(*http.Request) bool { return true }}
	log.Fatal(http.ListenAndServe(listen, http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		if !websocket.IsWebSocketUpgrade(r) {
			http.Error(w, "not a WebSocket handshake", http.StatusBadRequest)
			return
		}
		c, err := up.Upgrade(w, r, nil)
		if err != nil {
			return
		}
		defer c.Close()
		for {
			t, p, err := c.ReadMessage()
			if err != nil {
				return
			}
			if err := c.WriteMessage(t, p); err != nil {
				return
			}
		}
	})))
}
