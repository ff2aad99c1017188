package bridge

import (
	"bytes"
	"context"
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

func benchmarkDo(b *testing.B, size int) {
	body := bytes.Repeat([]byte("x"), size)
	ep := zmqtest.REP(b, func(r [][]byte) [][]byte { return [][]byte{[]byte("200"), nil, body} })
	c, err := NewClient(Options{Endpoints: []string{ep}})
	if err != nil {
		b.Fatal(err)
	}
	defer c.Close()
	req := &Request{Method: []byte("GET"), Target: []byte("/bench"), Headers: []byte("Host: h\r\n"), Meta: []byte("route: /\r\n")}
	b.ReportAllocs()
	b.SetBytes(int64(size))
	b.ResetTimer()
	for i := 0; i < b.N; i++ {
		resp, err := c.Do(context.Background(), req, 5*time.Second)
		if err != nil || len(resp.Body) != size {
			b.Fatal(err)
		}
	}
}

func BenchmarkClientDo12B(b *testing.B)   { benchmarkDo(b, 12) }
func BenchmarkClientDo64KiB(b *testing.B) { benchmarkDo(b, 64<<10) }
