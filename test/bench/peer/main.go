// Command peer is the benchmark's other side: the workers and backends every
// front talks to, all answering the same bytes ("hello world\n", or 64 KiB
// when the target's query is "big").
//
//	peer -mode zmq -listen tcp://127.0.0.1:5555        MZMQ/1 worker (libzmq ROUTER)
//	peer -mode zmq-zmtp -listen tcp://127.0.0.1:5555   the same on the worker package
//	peer -mode http -listen 127.0.0.1:8090             net/http backend
//	peer -mode revproxy -listen 127.0.0.1:8091 -backend http://127.0.0.1:8090
//	peer -mode mongrel2 -send tcp://127.0.0.1:9997 -recv tcp://127.0.0.1:9996
//	peer -mode sse -listen tcp://127.0.0.1:5557        streaming worker (streams.go)
//	peer -mode sse-zmtp -listen tcp://127.0.0.1:5557   the same on the worker package (zmtpstreams.go)
//	peer -mode origin -listen 127.0.0.1:8092           GRIP origin and transfer backend (streams.go)
//	peer -mode ws -listen tcp://127.0.0.1:5558         WebSocket echo worker (websockets.go)
//	peer -mode ws-zmtp -listen tcp://127.0.0.1:5558    the same on the worker package (zmtpws.go)
//	peer -mode wsecho -listen 127.0.0.1:8093           Go WebSocket echo server (websockets.go)
//	peer -mode zstream -listen tcp://127.0.0.1:8094    libzmq's ZMQ_STREAM alone: SSE and WebSocket echo (zstream.go)
package main

import (
	"bytes"
	"flag"
	"fmt"
	"log"
	"net/http"
	"net/http/httputil"
	"net/url"
	"strconv"
	"time"

	"github.com/modzmq/modzmq/worker"

	zmq "github.com/pebbe/zmq4"
)

var (
	small = []byte("hello world\n")
	big   = bytes.Repeat([]byte("x"), 65536)
)

func body(target []byte) []byte {
	if bytes.HasSuffix(target, []byte("?big")) {
		return big
	}
	return small
}

func main() {
	mode := flag.String("mode", "zmq", "zmq, http, revproxy, mongrel2, sse, sse-zmtp, origin, ws, ws-zmtp, wsecho or zstream")
	listen := flag.String("listen", "", "address to serve on")
	backend := flag.String("backend", "", "revproxy: backend URL")
	send := flag.String("send", "", "mongrel2: its send_spec")
	recv := flag.String("recv", "", "mongrel2: its recv_spec")
	keepalive := flag.Duration("keepalive", 20*time.Second, "sse, sse-zmtp: time between a held stream's keep-alives")
	upWindow := flag.Int64("upload-window", 1<<20, "sse, sse-zmtp: credit granted to a streamed request body")
	flag.Parse()
	switch *mode {
	case "zmq":
		serveZMQ(*listen)
	case "zmq-zmtp":
		serveZMQZMTP(*listen)
	case "http":
		log.Fatal(http.ListenAndServe(*listen, http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
			b := body([]byte(r.RequestURI))
			w.Header().Set("Content-Type", "text/plain")
			w.Header().Set("Content-Length", strconv.Itoa(len(b)))
			w.Write(b)
		})))
	case "revproxy":
		u, err := url.Parse(*backend)
		if err != nil {
			log.Fatal(err)
		}
		p := httputil.NewSingleHostReverseProxy(u)
		p.Transport = &http.Transport{MaxIdleConnsPerHost: 512}
		log.Fatal(http.ListenAndServe(*listen, p))
	case "mongrel2":
		serveMongrel2(*send, *recv)
	case "sse":
		serveStreams(*listen, *keepalive, *upWindow)
	case "sse-zmtp":
		serveStreamsZMTP(*listen, *keepalive, *upWindow)
	case "origin":
		serveOrigin(*listen)
	case "ws":
		serveWebSockets(*listen)
	case "ws-zmtp":
		serveWebSocketsZMTP(*listen)
	case "zstream":
		serveZStream(*listen)
	case "wsecho":
		serveWSEcho(*listen)
	default:
		log.Fatalf("unknown mode %q", *mode)
	}
}

// serveZMQZMTP is serveZMQ on the worker package: each front connection's
// goroutine answers its requests.
func serveZMQZMTP(listen string) {
	hdr := []byte("Content-Type: text/plain\r\n")
	status := []byte("200")
	srv, err := worker.Listen(listen, worker.HandlerFunc(func(c *worker.Conn, msg [][]byte) {
		i := worker.Delimiter(msg)
		if msg == nil || i < 0 || len(msg)-i-1 != 6 {
			return
		}
		c.SendMessage(msg[:i+1], status, hdr, body(msg[i+3]))
	}), nil)
	if err != nil {
		log.Fatal(err)
	}
	log.Fatal(srv.Serve())
}

func serveZMQ(listen string) {
	s, err := zmq.NewSocket(zmq.ROUTER)
	if err != nil {
		log.Fatal(err)
	}
	if err := s.Bind(listen); err != nil {
		log.Fatal(err)
	}
	hdr := []byte("Content-Type: text/plain\r\n")
	status := []byte("200")
	for {
		msg, err := s.RecvMessageBytes(0)
		if err != nil {
			continue
		}
		i := 0
		for i < len(msg) && len(msg[i]) != 0 {
			i++
		}
		if len(msg)-i-1 != 6 {
			continue
		}
		for _, f := range msg[:i+1] {
			s.SendBytes(f, zmq.SNDMORE)
		}
		s.SendBytes(status, zmq.SNDMORE)
		s.SendBytes(hdr, zmq.SNDMORE)
		s.SendBytes(body(msg[i+3]), 0)
	}
}

// zmqSender sends a ROUTER socket's messages: the envelope, then frames.
func zmqSender(s *zmq.Socket) func(env [][]byte, frames ...[]byte) {
	return func(env [][]byte, frames ...[]byte) {
		for _, f := range env {
			s.SendBytes(f, zmq.SNDMORE)
		}
		for i, f := range frames {
			flag := zmq.SNDMORE
			if i == len(frames)-1 {
				flag = 0
			}
			s.SendBytes(f, flag)
		}
	}
}

// serveMongrel2 speaks Mongrel2's handler protocol: requests arrive on a
// PULL socket as "UUID ID PATH HEADERS BODY" (netstrings); replies go out on
// a PUB socket as "UUID LEN:ID, <raw HTTP response>".
func serveMongrel2(send, recv string) {
	in, _ := zmq.NewSocket(zmq.PULL)
	out, _ := zmq.NewSocket(zmq.PUB)
	if err := in.Connect(send); err != nil {
		log.Fatal(err)
	}
	if err := out.Connect(recv); err != nil {
		log.Fatal(err)
	}
	for {
		msg, err := in.RecvBytes(0)
		if err != nil {
			continue
		}
		parts := bytes.SplitN(msg, []byte(" "), 4)
		if len(parts) < 4 {
			continue
		}
		uuid, id, path := parts[0], parts[1], parts[2]
		if bytes.Contains(parts[3], []byte(`"METHOD":"JSON"`)) {
			continue // disconnect notices
		}
		b := body(queryOf(path, parts[3]))
		resp := fmt.Appendf(nil, "%s %d:%s, HTTP/1.1 200 OK\r\nContent-Type: text/plain\r\nContent-Length: %d\r\n\r\n",
			uuid, len(id), id, len(b))
		out.SendBytes(append(resp, b...), 0)
	}
}

// queryOf returns "?big" when the request's QUERY header says big.
func queryOf(path, headers []byte) []byte {
	if bytes.Contains(headers, []byte(`"QUERY":"big"`)) {
		return []byte("?big")
	}
	return path
}
