package zmqtest

import (
	"bytes"
	"encoding/binary"
	"net"
	"syscall"
	"testing"

	zmq "github.com/pebbe/zmq4"
)

// ZMTPPeerHello is what a ZMTP 3.1 ROUTER sends first: its greeting (NULL
// mechanism) and its READY command.
func ZMTPPeerHello() []byte {
	g := make([]byte, 64)
	g[0], g[8], g[9], g[10], g[11] = 0xff, 1, 0x7f, 3, 1
	copy(g[12:], "NULL")
	return append(g, "\x04\x1c\x05READY\x0bSocket-Type\x00\x00\x00\x06ROUTER"...)
}

// ZMTPFrames reads data as a peer's ZMTP frames the plain way, as the
// bridge's ZMTP readers must: the messages it holds, and the errno that ends
// the reading (EPIPE at the end of the data, EMSGSIZE for a frame over
// maxMsgSize or a command over 64 KiB, EPROTO for an ERROR command or a
// command inside a message). Other commands are skipped.
func ZMTPFrames(data []byte, maxMsgSize int64) (msgs [][][]byte, end syscall.Errno) {
	var cur [][]byte
	for {
		if len(data) < 2 {
			return msgs, syscall.EPIPE
		}
		flags, size, hdr := data[0], uint64(data[1]), 2
		if flags&2 != 0 {
			if len(data) < 9 {
				return msgs, syscall.EPIPE
			}
			size, hdr = binary.BigEndian.Uint64(data[1:9]), 9
		}
		if flags&4 != 0 && size > 65536 || flags&4 == 0 && (size > 1<<40 || maxMsgSize > 0 && size > uint64(maxMsgSize)) {
			return msgs, syscall.EMSGSIZE
		}
		if uint64(len(data)-hdr) < size {
			return msgs, syscall.EPIPE
		}
		body := data[hdr : hdr+int(size)]
		data = data[hdr+int(size):]
		if flags&4 != 0 {
			if cur != nil || bytes.HasPrefix(body, []byte("\x05ERROR")) {
				return msgs, syscall.EPROTO
			}
			continue
		}
		cur = append(cur, body)
		if flags&1 == 0 {
			msgs, cur = append(msgs, cur), nil
		}
	}
}

// ZMTPUnreachable lists endpoints a ZMTP dial must fail on, each with what
// is there: nobody listening, an HTTP server, a PUB socket (which takes no
// DEALER) and a ROUTER whose ZAP handler refuses 127.0.0.1. ZAP runs until
// the test ends.
func ZMTPUnreachable(t testing.TB) (nobody, http, pub, zapRefused string) {
	t.Helper()
	l, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	nobody = "tcp://" + l.Addr().String()
	l.Close()

	l, _ = net.Listen("tcp", "127.0.0.1:0")
	t.Cleanup(func() { l.Close() })
	go func() {
		for {
			conn, err := l.Accept()
			if err != nil {
				return
			}
			conn.Write(append([]byte("HTTP/1.1 400 Bad Request\r\nConnection: close\r\n\r\n"), make([]byte, 64)...))
			conn.Close()
		}
	}()
	http = "tcp://" + l.Addr().String()

	bound := func(kind zmq.Type, setup func(*zmq.Socket)) string {
		s, _ := zmq.NewSocket(kind)
		s.SetLinger(0)
		setup(s)
		if err := s.Bind("tcp://127.0.0.1:*"); err != nil {
			t.Fatal(err)
		}
		t.Cleanup(func() { s.Close() })
		ep, _ := s.GetLastEndpoint()
		return ep
	}
	pub = bound(zmq.PUB, func(*zmq.Socket) {})
	if err := zmq.AuthStart(); err != nil {
		t.Fatal(err)
	}
	t.Cleanup(zmq.AuthStop)
	zmq.AuthDeny("zmqtest", "127.0.0.1")
	zapRefused = bound(zmq.ROUTER, func(s *zmq.Socket) { s.SetZapDomain("zmqtest") })
	return nobody, http, pub, zapRefused
}
