package bridge

import (
	"bytes"
	"context"
	"net"
	"os"
	"os/exec"
	"testing"
	"time"

	"github.com/modzmq/modzmq/internal/zmqtest"
)

// Allocation benchmarks for the body's path through the bridge: run with
// go test -run '^$' -bench . -benchmem ./bridge

func BenchmarkDecodeReply64KiB(b *testing.B) {
	body := bytes.Repeat([]byte("x"), 64<<10)
	frames := [][]byte{[]byte("200"), []byte("Content-Type: text/plain\r\n"), body}
	b.ReportAllocs()
	b.SetBytes(int64(len(body)))
	for i := 0; i < b.N; i++ {
		if _, err := DecodeReply(frames); err != nil {
			b.Fatal(err)
		}
	}
}

func benchmarkDo(b *testing.B, size int, upload bool) {
	body := bytes.Repeat([]byte("x"), size)
	reply := body
	if upload {
		reply = []byte("ok")
	}
	var ep string
	if upload {
		// A worker in a process of its own: its copy of the body would
		// count in this one's allocations.
		ep = pythonREP(b)
	} else {
		ep = zmqtest.REP(b, func(r [][]byte) [][]byte { return [][]byte{[]byte("200"), nil, reply} })
	}
	c, err := NewClient(Options{Endpoints: []string{ep}})
	if err != nil {
		b.Fatal(err)
	}
	defer c.Close()
	req := &Request{Method: []byte("GET"), Target: []byte("/bench"), Headers: []byte("Host: h\r\n"), Meta: []byte("route: /\r\n")}
	if upload {
		req.Method, req.Body = []byte("POST"), body
	}
	b.ReportAllocs()
	b.SetBytes(int64(size))
	b.ResetTimer()
	for i := 0; i < b.N; i++ {
		resp, err := c.Do(context.Background(), req, 5*time.Second)
		if err != nil || len(resp.Body) != len(reply) {
			b.Fatal(err)
		}
	}
}

func BenchmarkClientDo12B(b *testing.B)   { benchmarkDo(b, 12, false) }
func BenchmarkClientDo64KiB(b *testing.B) { benchmarkDo(b, 64<<10, false) }

// pythonREP runs a pyzmq REP worker answering "200", "", "ok".
func pythonREP(b *testing.B) string {
	l, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		b.Fatal(err)
	}
	ep := "tcp://" + l.Addr().String()
	l.Close()
	cmd := exec.Command("/usr/bin/python3", "-c", `import sys, zmq
s = zmq.Context().socket(zmq.REP)
s.bind(sys.argv[1])
while True:
    s.recv_multipart(copy=False)
    s.send_multipart([b"200", b"", b"ok"])`, ep)
	cmd.Stderr = os.Stderr
	if err := cmd.Start(); err != nil {
		b.Skipf("no python3 for the worker: %v", err)
	}
	b.Cleanup(func() { cmd.Process.Kill(); cmd.Wait() })
	return ep
}

// The request body goes out from where it is: no allocation of its size.
func BenchmarkClientUpload64KiB(b *testing.B) { benchmarkDo(b, 64<<10, true) }
