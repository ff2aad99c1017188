package main

// The floor under stream mode's memory (`modzmq-bench`, front "libzmq"):
//
//	peer -mode zstream -listen tcp://127.0.0.1:8094   libzmq's ZMQ_STREAM alone
//
// One ZMQ_STREAM socket (libzmq through pebbe/zmq4) holds the connections,
// as zmq-gateway's stream mode does, with nothing else per connection but
// a map entry (and, once a WebSocket's first message comes, a
// wsproto.Reader). It answers a WebSocket handshake with 101 and echoes each
// message with its type; it answers any other request with an SSE head and
// one event, and holds the stream. The benchmark measures it beside stream
// mode: what libzmq keeps for each connection, under whatever stream mode
// adds.

import (
	"bufio"
	"bytes"
	"log"
	"net/http"
	"net/textproto"

	zmq "github.com/pebbe/zmq4"

	"github.com/modzmq/modzmq/internal/wsproto"
)

var zstreamSSE = []byte("HTTP/1.1 200 OK\r\nContent-Type: text/event-stream\r\nCache-Control: no-cache\r\n\r\ndata: hello\n\n")

// zconn is one connection: the bytes of a request head still coming, or
// the WebSocket it became.
type zconn struct {
	head []byte
	ws   *wsproto.Reader // nil until the first message after the handshake
	open bool            // the handshake was answered with 101
}

func serveZStream(listen string) {
	s, err := zmq.NewSocket(zmq.STREAM)
	if err != nil {
		log.Fatal(err)
	}
	s.SetBacklog(4096) // 10,000 connections arrive 256 at a time
	s.SetSndhwm(0)
	s.SetRcvhwm(0)
	if err := s.Bind(listen); err != nil {
		log.Fatal(err)
	}
	send := func(id string, b []byte) {
		s.Send(id, zmq.SNDMORE)
		s.SendBytes(b, 0)
	}
	conns := map[string]*zconn{}
	var out []byte
	for {
		m, err := s.RecvMessageBytes(0)
		if err != nil || len(m) != 2 {
			continue
		}
		id, data := string(m[0]), m[1]
		c := conns[id]
		if len(data) == 0 { // libzmq's notice: connected, or gone
			if c == nil {
				conns[id] = &zconn{}
			} else {
				delete(conns, id)
			}
			continue
		}
		if c == nil {
			c = &zconn{}
			conns[id] = c
		}
		if !c.open {
			c.head = append(c.head, data...)
			end := bytes.Index(c.head, []byte("\r\n\r\n"))
			if end < 0 {
				continue
			}
			req, err := http.ReadRequest(bufio.NewReader(bytes.NewReader(c.head[:end+4])))
			c.head = nil
			if err != nil {
				send(id, nil) // an empty message closes the connection
				delete(conns, id)
				continue
			}
			key := req.Header.Get("Sec-WebSocket-Key")
			if !headerHas(req.Header, "Upgrade", "websocket") || key == "" {
				send(id, zstreamSSE)
				continue
			}
			c.open = true
			send(id, []byte("HTTP/1.1 101 Switching Protocols\r\nUpgrade: websocket\r\nConnection: Upgrade\r\nSec-WebSocket-Accept: "+
				wsproto.AcceptKey(key)+"\r\n\r\n"))
			continue
		}
		if c.ws == nil {
			c.ws = &wsproto.Reader{}
		}
		for len(data) > 0 {
			n := min(int64(len(data)), c.ws.Space())
			c.ws.Feed(data[:n])
			data = data[n:]
			out = out[:0]
			closed := false
			for {
				ev, ok, err := c.ws.Next()
				if err != nil || !ok {
					closed = err != nil
					break
				}
				switch ev.Kind {
				case wsproto.Text, wsproto.Binary:
					out = wsproto.AppendFrame(out, ev.Kind, ev.Data)
				case wsproto.Ping:
					out = wsproto.AppendPong(out, ev.Data)
				case wsproto.Close:
					out = wsproto.AppendClose(out, ev.Code, nil)
					closed = true
				}
				if closed {
					break
				}
			}
			if len(out) > 0 {
				send(id, out)
			}
			if closed {
				send(id, nil)
				delete(conns, id)
				break
			}
		}
	}
}

// headerHas reports whether one of the comma-separated values of the header
// name is value, in any case.
func headerHas(h http.Header, name, value string) bool {
	for _, v := range h.Values(textproto.CanonicalMIMEHeaderKey(name)) {
		for _, f := range bytes.Split([]byte(v), []byte(",")) {
			if bytes.EqualFold(bytes.TrimSpace(f), []byte(value)) {
				return true
			}
		}
	}
	return false
}
