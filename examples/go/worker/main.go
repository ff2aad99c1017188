// Command worker is a pure-Go MZMQ/1 worker: it binds with
// github.com/modzmq/modzmq/worker (ZMTP 3.1 in Go, no libzmq, no cgo) and
// answers each request with JSON describing it, or with the request body
// itself when the path ends in /raw.
//
// Each front's connection has a goroutine of its own, which reads its
// requests and writes their replies, so a front that stops reading holds
// up only its own connection. The worker answers the fronts' ZMTP
// heartbeats.
//
//	go run ./examples/go/worker -bind tcp://127.0.0.1:5556
package main

import (
	"bytes"
	"context"
	"crypto/sha256"
	"encoding/hex"
	"encoding/json"
	"flag"
	"fmt"
	"log"
	"os"
	"os/signal"
	"strings"
	"syscall"
	"time"

	"github.com/modzmq/modzmq/worker"
)

type request struct {
	Protocol   string            `json:"protocol"`
	Method     string            `json:"method"`
	Target     string            `json:"target"`
	Headers    [][2]string       `json:"headers"`
	Meta       map[string]string `json:"meta"`
	BodyLength int               `json:"body_length"`
	BodySHA256 string            `json:"body_sha256"`
	Worker     string            `json:"worker"`
}

// lines splits "Name: value\r\n" lines into pairs.
func lines(b []byte) [][2]string {
	var out [][2]string
	for _, l := range strings.Split(string(b), "\r\n") {
		if name, value, ok := strings.Cut(l, ":"); ok {
			out = append(out, [2]string{name, strings.TrimSpace(value)})
		}
	}
	return out
}

// answer builds the reply frames for one request's six frames.
func answer(name string, f [][]byte) [][]byte {
	path, _, _ := strings.Cut(string(f[2]), "?")
	if strings.HasSuffix(path, "/raw") {
		return [][]byte{[]byte("200"), []byte("Content-Type: application/octet-stream\r\n"), f[5]}
	}
	sum := sha256.Sum256(f[5])
	req := request{
		Worker:     name,
		Protocol:   string(f[0]),
		Method:     string(f[1]),
		Target:     string(f[2]),
		Headers:    lines(f[3]),
		Meta:       map[string]string{},
		BodyLength: len(f[5]),
		BodySHA256: hex.EncodeToString(sum[:]),
	}
	for _, kv := range lines(f[4]) {
		req.Meta[kv[0]] = kv[1]
	}
	body, _ := json.Marshal(req)
	return [][]byte{[]byte("200"), []byte("Content-Type: application/json\r\n"), body}
}

func main() {
	bind := flag.String("bind", "tcp://127.0.0.1:5556", "endpoint to bind")
	name := flag.String("name", "go-worker", "worker name reported in replies")
	flag.Parse()

	srv, err := worker.Listen(*bind, worker.HandlerFunc(func(c *worker.Conn, msg [][]byte) {
		if msg == nil {
			return // the connection ended; nothing is kept per connection
		}
		// The envelope is everything up to and including the first empty
		// frame: [request-id, ""] from a bridge, more through proxies.
		i := worker.Delimiter(msg)
		if i < 0 || len(msg)-i-1 != 6 || !bytes.Equal(msg[i+1], []byte("MZMQ/1")) {
			log.Printf("dropped a message that is not an MZMQ/1 request (%d frames)", len(msg))
			return
		}
		if err := c.SendMessage(msg[:i+1], answer(*name, msg[i+1:])...); err != nil {
			log.Printf("send: %v", err)
		}
	}), nil)
	if err != nil {
		log.Fatalf("listen %s: %v", *bind, err)
	}
	fmt.Fprintln(os.Stdout, "ready")
	// SIGTERM or ^C: the requests read are answered, then the worker exits;
	// a second signal ends it at once.
	ctx, stop := signal.NotifyContext(context.Background(), os.Interrupt, syscall.SIGTERM)
	context.AfterFunc(ctx, stop)
	if err := srv.Run(ctx, 10*time.Second); err != nil {
		log.Fatal(err)
	}
}
