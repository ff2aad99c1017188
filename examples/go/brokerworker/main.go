// Command brokerworker is an MZMQ/1 worker behind the mod_zmq broker
// (zmq-gateway broker), speaking the worker protocol MZMQW/1 of
// docs/PROTOCOL.md with libzmq (github.com/pebbe/zmq4): it connects a DEALER
// to the broker's backend, says READY, heartbeats every second whether idle
// or busy, and reconnects when the broker goes quiet.
//
//	go run ./examples/go/brokerworker -connect tcp://127.0.0.1:5556
package main

import (
	"encoding/json"
	"flag"
	"fmt"
	"log"
	"os"
	"strings"
	"time"

	zmq "github.com/pebbe/zmq4"
)

const (
	version   = "MZMQW/1"
	heartbeat = time.Second
	liveness  = 3
)

// handle turns the six request frames into reply frames.
func handle(name string, f [][]byte) [][]byte {
	body, _ := json.Marshal(map[string]any{"worker": name, "method": string(f[1]), "target": string(f[2]),
		"body_length": len(f[5])})
	if path, _, _ := strings.Cut(string(f[2]), "?"); strings.HasSuffix(path, "/raw") {
		body = f[5]
	}
	return [][]byte{[]byte("200"), []byte("Content-Type: application/json\r\n"), body}
}

// work runs requests from the pipe one at a time, so the main loop keeps
// heartbeating while a request takes long.
func work(name string) {
	pipe, _ := zmq.NewSocket(zmq.PAIR)
	pipe.Connect("inproc://jobs")
	for {
		msg, err := pipe.RecvMessageBytes(0)
		if err != nil {
			log.Fatalf("jobs pipe: %v", err)
		}
		i := 0
		for len(msg[i]) != 0 {
			i++
		}
		pipe.SendMessage(msg[:i+1], handle(name, msg[i+1:]))
	}
}

func main() {
	broker := flag.String("connect", "tcp://127.0.0.1:5556", "the broker's backend endpoint")
	name := flag.String("name", "brokerworker", "worker name reported in replies")
	flag.Parse()

	pipe, _ := zmq.NewSocket(zmq.PAIR)
	if err := pipe.Bind("inproc://jobs"); err != nil {
		log.Fatal(err)
	}
	go work(*name)
	fmt.Fprintln(os.Stdout, "ready")
	for { // one connection to the broker per pass
		sock, _ := zmq.NewSocket(zmq.DEALER)
		sock.SetLinger(0)
		sock.Connect(*broker)
		sock.SendMessage("", version, "READY")
		poller := zmq.NewPoller()
		poller.Add(sock, zmq.POLLIN)
		poller.Add(pipe, zmq.POLLIN)
		heard, beat := time.Now(), time.Now().Add(heartbeat)
		for time.Since(heard) < liveness*heartbeat {
			polled, _ := poller.Poll(heartbeat / 4)
			for _, p := range polled {
				if p.Socket == pipe {
					reply, _ := pipe.RecvMessageBytes(0)
					sock.SendMessage(reply)
					continue
				}
				msg, err := sock.RecvMessageBytes(0)
				if err != nil || len(msg) == 0 {
					continue
				}
				heard = time.Now()
				if len(msg[0]) == 0 { // control: ["", MZMQW/1, command]
					if len(msg) == 3 && string(msg[2]) == "DISCONNECT" {
						heard = time.Time{}
					}
					continue
				}
				pipe.SendMessage(msg) // a request: [envelope..., "", six frames]
			}
			if time.Now().After(beat) {
				sock.SendMessage("", version, "HEARTBEAT")
				beat = time.Now().Add(heartbeat)
			}
		}
		sock.Close() // the broker went quiet: reconnect
		time.Sleep(200 * time.Millisecond)
	}
}
