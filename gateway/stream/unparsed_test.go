package stream

import (
	"fmt"
	"io"
	"net"
	"runtime"
	"strings"
	"testing"
	"time"

	"github.com/modzmq/modzmq/gateway"
	"github.com/modzmq/modzmq/internal/zmqtest"
)

// heapInuse is the Go heap in use after a collection.
func heapInuse() uint64 {
	runtime.GC()
	var ms runtime.MemStats
	runtime.ReadMemStats(&ms)
	return ms.HeapInuse
}

// A client that sends on while its connection parses no further request
// (after a request that closes it, or with maxPipeline requests waiting
// for a worker that answers nothing) is not buffered without bound: 128 MiB
// of it grow the heap by less than 32 MiB (overflows).
func TestUnparsedBytesAreBounded(t *testing.T) {
	for _, mode := range []string{"close", "pipeline"} {
		t.Run(mode, func(t *testing.T) {
			ep := zmqtest.ROUTERIdle(t, func(msg [][]byte, reply func([][]byte)) {}, nil) // answers nothing
			_, addr := startServer(t, Options{Drain: time.Second}, gateway.Route{Prefix: "/", Backend: []string{ep}})
			before := heapInuse()
			c, err := net.Dial("tcp", addr)
			if err != nil {
				t.Fatal(err)
			}
			defer c.Close()
			var b strings.Builder
			if mode == "close" {
				b.WriteString("GET /a HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n")
			} else {
				for i := 0; i < maxPipeline; i++ {
					fmt.Fprintf(&b, "GET /p/%d HTTP/1.1\r\nHost: x\r\n\r\n", i)
				}
			}
			io.WriteString(c, b.String())
			junk := []byte(strings.Repeat("GET /more HTTP/1.1\r\nHost: x\r\n\r\n", 1<<15)) // ~1 MiB
			const total = 128 << 20
			c.SetWriteDeadline(time.Now().Add(20 * time.Second))
			sent := 0
			for sent < total {
				n, err := c.Write(junk)
				sent += n
				if err != nil {
					break
				}
			}
			time.Sleep(500 * time.Millisecond)
			grew := int64(heapInuse()) - int64(before)
			t.Logf("client sent %d MiB; server heap grew by %d MiB", sent>>20, grew>>20)
			if grew > 32<<20 {
				t.Errorf("heap grew by %d MiB for %d MiB the server cannot parse yet: unbounded buffering", grew>>20, sent>>20)
			}
		})
	}
}
