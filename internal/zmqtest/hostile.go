package zmqtest

import (
	"bufio"
	"encoding/binary"
	"io"
	"net"
	"sync"
	"syscall"
	"testing"
	"time"
)

// Raw is a ZMTP worker written on a raw TCP socket, so that a test controls
// every byte a bridge receives: it sends ready (its greeting and READY, or
// anything else), then hands each request it reads to serve, which answers
// by writing whatever it likes. Commands from the bridge (PONGs) are read
// and dropped. Raw stops when the test ends.
type Raw struct {
	Endpoint string

	mu    sync.Mutex
	conns map[net.Conn]bool
	done  chan struct{}
}

// StartRaw listens on a free port of 127.0.0.1. ready is written first on
// every connection (nil: ZMTPPeerHello); serve gets each request message,
// envelope first ([request-id, "", "MZMQ/1", method, target, headers, meta,
// body]), and the connection to write the answer on. A write that fails
// (the bridge closed the connection) ends serve's work.
func StartRaw(t testing.TB, ready []byte, serve func(c net.Conn, req [][]byte)) *Raw {
	t.Helper()
	l, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	if ready == nil {
		ready = ZMTPPeerHello()
	}
	r := &Raw{Endpoint: "tcp://" + l.Addr().String(), conns: map[net.Conn]bool{}, done: make(chan struct{})}
	var wg sync.WaitGroup
	go func() {
		for {
			c, err := l.Accept()
			if err != nil {
				return
			}
			r.mu.Lock()
			r.conns[c] = true
			r.mu.Unlock()
			wg.Add(1)
			go func() {
				defer wg.Done()
				defer c.Close()
				r.handle(c, ready, serve)
			}()
		}
	}()
	t.Cleanup(func() {
		close(r.done)
		l.Close()
		r.mu.Lock()
		for c := range r.conns {
			c.Close()
		}
		r.mu.Unlock()
		wg.Wait()
	})
	return r
}

// Stopped reports whether the test ended; serve's loops check it.
// HeldStreamEvent is the one event StartHeldStream's worker sends.
const HeldStreamEvent = "data: 0\n\n"

// StartHeldStream starts a raw worker that answers each GET with a
// stream's head and one event (HeldStreamEvent), then calls after with the
// connection: close it for a worker that goes away; nil leaves it open and
// silent (no PONG to the bridge's PINGs either).
func StartHeldStream(t testing.TB, after func(c net.Conn)) *Raw {
	return StartRaw(t, nil, func(c net.Conn, req [][]byte) {
		if string(req[3]) != "GET" {
			return
		}
		c.Write(Message(req[0], nil, []byte("@stream"), []byte("200"), nil))
		c.Write(Message(req[0], nil, []byte("@data"), []byte(HeldStreamEvent)))
		if after != nil {
			after(c)
		}
	})
}

func (r *Raw) Stopped() bool {
	select {
	case <-r.done:
		return true
	default:
		return false
	}
}

func (r *Raw) handle(c net.Conn, ready []byte, serve func(net.Conn, [][]byte)) {
	if _, err := c.Write(ready); err != nil {
		return
	}
	reqs := make(chan [][]byte, 16)
	go func() {
		defer close(reqs)
		br := bufio.NewReaderSize(c, 64<<10)
		rd := &frameReader{r: br}
		var greeting [64]byte
		if _, err := io.ReadFull(br, greeting[:]); err != nil {
			return
		}
		var msg [][]byte
		for {
			flags, body, err := rd.next()
			if err != nil {
				return
			}
			if flags&4 != 0 {
				continue // READY, PONG: nothing to do
			}
			msg = append(msg, body)
			if flags&1 == 0 {
				reqs <- msg
				msg = nil
			}
		}
	}()
	for req := range reqs {
		serve(c, req)
	}
}

type frameReader struct{ r io.Reader }

func (f *frameReader) next() (flags byte, body []byte, err error) {
	var h [9]byte
	if _, err := io.ReadFull(f.r, h[:2]); err != nil {
		return 0, nil, err
	}
	size := uint64(h[1])
	if h[0]&2 != 0 {
		if _, err := io.ReadFull(f.r, h[2:9]); err != nil {
			return 0, nil, err
		}
		size = binary.BigEndian.Uint64(h[1:9])
	}
	if size > 1<<30 {
		return 0, nil, io.ErrUnexpectedEOF
	}
	body = make([]byte, size)
	_, err = io.ReadFull(f.r, body)
	return h[0], body, err
}

// Frame returns one ZMTP frame: flags (MORE 1, COMMAND 4; LONG is set
// from the size) and body.
func Frame(flags byte, body []byte) []byte {
	return append(FrameHeader(flags, uint64(len(body))), body...)
}

// FrameHeader returns the header of a frame claiming size bytes, which the
// caller may or may not send.
func FrameHeader(flags byte, size uint64) []byte {
	if size > 255 {
		return binary.BigEndian.AppendUint64([]byte{flags | 2}, size)
	}
	return []byte{flags, byte(size)}
}

// Message returns frames as one ZMTP message.
func Message(frames ...[]byte) []byte {
	var b []byte
	for i, f := range frames {
		more := byte(1)
		if i == len(frames)-1 {
			more = 0
		}
		b = append(b, Frame(more, f)...)
	}
	return b
}

// ZMTPHello returns a NULL greeting followed by a READY command with the
// given metadata bytes (after the command name).
func ZMTPHello(metadata []byte) []byte {
	g := ZMTPPeerHello()[:64]
	return append(g, Frame(4, append([]byte("\x05READY"), metadata...))...)
}

// Property returns one READY metadata property.
func Property(name string, value []byte) []byte {
	b := append([]byte{byte(len(name))}, name...)
	b = binary.BigEndian.AppendUint32(b, uint32(len(value)))
	return append(b, value...)
}

// Flood writes chunk to c until the write fails (the bridge closed the
// connection), the test ends, or limit bytes are out; it returns how many
// bytes were written. pause, when not zero, trickles the chunks.
func (r *Raw) Flood(c net.Conn, chunk []byte, limit int64, pause time.Duration) int64 {
	var n int64
	for n < limit && !r.Stopped() {
		c.SetWriteDeadline(time.Now().Add(time.Second))
		k, err := c.Write(chunk)
		n += int64(k)
		if err != nil {
			if ne, ok := err.(net.Error); ok && ne.Timeout() {
				continue // the bridge reads no more for now
			}
			break
		}
		if pause > 0 {
			time.Sleep(pause)
		}
	}
	return n
}

// PeerSocket makes a socket pair whose far end plays a peer for a reader's
// tests: it writes data chunk bytes at a time (all at once when chunk <= 0)
// and ends its stream, while it reads and drops what it is sent (PONGs), so
// a reader's writes never fill its socket. It returns the near end,
// non-blocking, for a connection to own; done waits for the peer before
// closing its socket, so no late call of the peer's reaches a descriptor
// number reused since.
func PeerSocket(data []byte, chunk int) (fd int, done func(), err error) {
	fds, err := syscall.Socketpair(syscall.AF_UNIX, syscall.SOCK_STREAM|syscall.SOCK_CLOEXEC, 0)
	if err != nil {
		return -1, nil, err
	}
	if chunk <= 0 {
		chunk = len(data)
	}
	wrote, drained := make(chan struct{}), make(chan struct{})
	go func() {
		defer close(wrote)
		for len(data) > 0 {
			n, err := syscall.Write(fds[1], data[:min(chunk, len(data))])
			if err == syscall.EINTR { // Go's preemption signals, often under the fuzzer
				continue
			}
			if err != nil {
				break
			}
			data = data[n:]
		}
		syscall.Shutdown(fds[1], syscall.SHUT_WR)
	}()
	go func() {
		defer close(drained)
		var sink [4096]byte
		for {
			if n, err := syscall.Read(fds[1], sink[:]); n <= 0 && err != syscall.EINTR {
				return
			}
		}
	}()
	syscall.SetNonblock(fds[0], true)
	return fds[0], func() {
		syscall.Shutdown(fds[1], syscall.SHUT_RDWR)
		<-wrote
		<-drained
		syscall.Close(fds[1])
	}, nil
}
