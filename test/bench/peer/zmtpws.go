package main

// peer -mode ws-zmtp -listen tcp://127.0.0.1:5555
//
// The WebSocket echo worker of -mode ws on the worker package (ZMTP on Go's
// own sockets, no libzmq): each front connection's goroutine handles its
// messages and writes the echoes back on it, as a Go WebSocket server
// writes back on its client's connection. The credit rules are -mode ws's
// (wsConn), with one map of WebSockets per front connection: the gateway
// and stream mode carry many WebSockets over one.

import (
	"log"
	"sync"

	"github.com/modzmq/modzmq/worker"
)

func serveWebSocketsZMTP(listen string) {
	conns := map[*worker.Conn]map[string]*wsConn{} // the connection's goroutine alone uses its map
	var mu sync.Mutex
	srv, err := worker.Listen(listen, worker.HandlerFunc(func(c *worker.Conn, msg [][]byte) {
		mu.Lock()
		sockets := conns[c]
		if sockets == nil {
			sockets = map[string]*wsConn{}
			conns[c] = sockets
		}
		if msg == nil {
			delete(conns, c)
		}
		mu.Unlock()
		if msg != nil {
			handleWS(sockets, msg, func(env [][]byte, frames ...[]byte) { c.SendMessage(env, frames...) }, true)
		}
	}), nil)
	if err != nil {
		log.Fatal(err)
	}
	log.Fatal(srv.Serve())
}
