package zmqtest

import (
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

// The reader's limits: the most frames of a message (an MZMQ/1 reply with
// its envelope: request id, empty delimiter, status, headers, body), and
// what each frame counts against a message size limit on top of its size.
const (
	ZMTPMaxFrames = 5
	ZMTPFrameCost = 64
)

// ZMTPPeerReadySize is the size of the READY command in ZMTPPeerHello: a
// reader whose size limit is below it refuses the handshake, as libzmq does.
const ZMTPPeerReadySize = 28

// ZMTPFrames is the specification of the bridge's ZMTP readers (zmtp.c in
// the Apache module, bridge.zmtpConn in Go): it reads data, a peer's frames
// after the handshake, and returns the messages it holds and the errno that
// ends the reading:
//   - EPIPE at the end of the data;
//   - EMSGSIZE for a frame header claiming over 2^40 bytes or, with
//     maxMsgSize > 0, a header that takes its message past maxMsgSize (each
//     frame of a message, and each command among them, counts its size plus
//     ZMTPFrameCost), or a command outside a message over maxMsgSize. Decided
//     from the header, before the body arrives;
//   - E2BIG for the ZMTPMaxFrames-th frame of a message announcing one more
//     (MORE set), decided from its header;
//   - EPROTO for a command whose name runs past its end.
//
// Commands are otherwise skipped wherever they arrive (PING is answered,
// ERROR ignored once the handshake is over), as libzmq 4.3.4 does.
func ZMTPFrames(data []byte, maxMsgSize int64) (msgs [][][]byte, end syscall.Errno) {
	return ZMTPFramesLimit(data, maxMsgSize, ZMTPMaxFrames)
}

// ZMTPFramesLimit is ZMTPFrames with maxFrames in place of ZMTPMaxFrames:
// the specification of the worker package's reader, which reads requests
// (worker.Options.MaxFrames) where the bridge's read replies.
func ZMTPFramesLimit(data []byte, maxMsgSize int64, maxFrames int) (msgs [][][]byte, end syscall.Errno) {
	var cur [][]byte
	var cost uint64
	limit := uint64(max(maxMsgSize, 0))
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
		command, more := flags&4 != 0, flags&1 != 0
		switch {
		case size > 1<<40:
			return msgs, syscall.EMSGSIZE
		case limit > 0 && command && len(cur) == 0 && size > limit:
			return msgs, syscall.EMSGSIZE
		case limit > 0 && !(command && len(cur) == 0) && cost+size+ZMTPFrameCost > limit:
			return msgs, syscall.EMSGSIZE
		case !command && more && len(cur) == maxFrames-1:
			return msgs, syscall.E2BIG
		case uint64(len(data)-hdr) < size:
			return msgs, syscall.EPIPE
		}
		body := data[hdr : hdr+int(size)]
		data = data[hdr+int(size):]
		if command {
			if len(body) < 1 || int(body[0])+1 > len(body) {
				return msgs, syscall.EPROTO
			}
			if len(cur) > 0 {
				cost += size + ZMTPFrameCost
			}
			continue
		}
		cur = append(cur, body)
		cost += size + ZMTPFrameCost
		if !more {
			msgs, cur, cost = append(msgs, cur), nil, 0
		}
	}
}

// ZMTPCases are streams (after the handshake) that cover each rule of
// ZMTPFrames, for the tests of both readers.
var ZMTPCases = [][]byte{
	nil,
	{0, 0},
	{1, 1, 'a', 0, 1, 'b'},
	{1, 1, 'a'},
	{4, 7, 4, 'P', 'I', 'N', 'G', 0, 0, 0, 2, 'o', 'k'},
	{4, 3, 1, 'X', 'Y', 0, 1, 'z'},
	{1, 0, 4, 3, 1, 'X', 'Y', 0, 0},          // a command inside a message
	{4, 6, 5, 'E', 'R', 'R', 'O', 'R', 0, 0}, // ERROR after the handshake: ignored
	{4, 0, 0, 0},                             // a command without a name
	{4, 2, 5, 'E'},                           // a name past the command's end
	{0, 5, 'a'},                              // a frame cut short
	append([]byte{2, 0, 0, 0, 0, 0, 0, 1, 0}, make([]byte, 256)...),
	{2, 0xff, 0, 0, 0, 0, 0, 0, 1, 0},                     // a claim over 2^40
	{2, 0, 0, 1, 0, 0, 0, 0, 0, 'x', 'y'},                 // a 1 TiB claim, trickled
	{1, 0, 1, 0, 1, 0, 1, 0, 0, 1, 'n'},                   // five frames: the most
	{1, 0, 1, 0, 1, 0, 1, 0, 1, 0, 1, 0, 1, 0, 0, 1, 'n'}, // eight: too many
	{1, 40, 'a'}, // 40 + 64 bytes against a limit of 100
	{1, 20, 'a', 'b', 'c', 'd', 'e', 'f', 'g', 'h', 'i', 'j', 'k', 'l', 'm', 'n', 'o', 'p', 'q', 'r', 's', 't', 0, 0},
	{4, 100, 4, 'P', 'I', 'N', 'G'}, // a command alone at the limit
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

// SourceAddresses are the source parts of tcp://source;host:port endpoints
// the tests of every reader of them (bridge.ParseEndpoint, the Apache
// module's configtest, zmtp.c's connect) check against each other: those
// marked true are accepted.
var SourceAddresses = map[string]bool{
	"127.0.0.1": true, "127.0.0.1:0": true, "127.0.0.1:*": true, "*": true, "*:*": true, "*:0": true,
	"eth0": false, "lo:0": false, "127.0.0.1:": false, "127.0.0.1:x": false, "127.0.0.1:70000": false,
	"[127.0.0.1": false, "": false, "localhost": false, "127.0.0.1:000000": false, "127.0.0.1:+0": false,
	"127.0.0.1:-0": false, "127.0.0.1:00000": true,
}

// ZMTPHandshake is a peer's side of a handshake, from its greeting on, and
// what a bridge reader makes of it with a size limit: 0 (accepted), EPROTO
// (not a ZMTP 3 NULL worker socket that takes a DEALER, or a malformed
// command), EACCES (a well-formed ERROR: refused), EMSGSIZE (a command over
// the limit) or EPIPE (the peer stopped early). Both readers run every one,
// and behave as libzmq 4.3.4 does.
type ZMTPHandshake struct {
	Name  string
	Peer  []byte
	Limit int64
	Want  syscall.Errno
}

// ZMTPHandshakes are the handshake vectors of both readers.
var ZMTPHandshakes = func() []ZMTPHandshake {
	greeting := ZMTPPeerHello()[:64]
	with := func(i int, b byte) []byte {
		g := append([]byte(nil), greeting...)
		g[i] = b
		return g
	}
	ready := func(meta ...[]byte) []byte {
		b := []byte("\x05READY")
		for _, m := range meta {
			b = append(b, m...)
		}
		return append(append([]byte(nil), greeting...), Frame(4, b)...)
	}
	sock := func(t string) []byte { return Property("Socket-Type", []byte(t)) }
	big := Property("X-Big", make([]byte, 70000))
	return []ZMTPHandshake{
		{"ROUTER", ZMTPPeerHello(), 0, 0},
		{"REP", ready(sock("REP")), 0, 0},
		{"DEALER", ready(sock("DEALER")), 0, 0},
		{"no Socket-Type", ready(), 0, 0},
		{"more properties", ready(sock("ROUTER"), Property("Identity", nil), Property("X-Any", []byte("v"))), 0, 0},
		{"PUB", ready(sock("PUB")), 0, syscall.EPROTO},
		{"socket-type in another case is just a property", ready(Property("socket-type", []byte("PUB"))), 0, 0},
		{"a value past the end", ready(sock("ROUTER"), []byte{5, 'X', '-', 'a', 'b', 'c', 0, 0, 1, 0, 'v'}), 0, syscall.EPROTO},
		{"a name cut short", ready(sock("ROUTER"), []byte{9, 'X', '-', 'a'}), 0, syscall.EPROTO},
		{"one byte left over", ready(sock("ROUTER"), []byte{0}), 0, syscall.EPROTO},
		{"a 70 KB property", ready(sock("ROUTER"), big), 0, 0},
		{"a 70 KB property over the limit", ready(sock("ROUTER"), big), 1000, syscall.EMSGSIZE},
		{"CURVE", append(func() []byte { g := append([]byte(nil), greeting...); copy(g[12:], "CURVE"); return g }(), Frame(4, []byte("\x05READY"))...), 0, syscall.EPROTO},
		{"ZMTP 2", append(with(10, 2), Frame(4, []byte("\x05READY"))...), 0, syscall.EPROTO},
		{"no signature", append(with(0, 0x7f), Frame(4, []byte("\x05READY"))...), 0, syscall.EPROTO},
		{"ERROR", append(append([]byte(nil), greeting...), Frame(4, []byte("\x05ERROR\x03bad"))...), 0, syscall.EACCES},
		{"ERROR without its reason", append(append([]byte(nil), greeting...), Frame(4, []byte("\x05ERROR"))...), 0, syscall.EPROTO},
		{"PING before READY", append(append([]byte(nil), greeting...), Frame(4, []byte("\x04PING\x00\x00"))...), 0, syscall.EPROTO},
		{"a message before READY", append(append([]byte(nil), greeting...), Frame(0, []byte("hi"))...), 0, syscall.EPROTO},
		{"the greeting alone", append([]byte(nil), greeting...), 0, syscall.EPIPE},
		{"half a greeting", greeting[:30], 0, syscall.EPIPE},
	}
}()
