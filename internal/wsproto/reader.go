package wsproto

import (
	"encoding/binary"
	"io"
	"sync"
	"unicode/utf8"

	"github.com/gobwas/ws"

	"github.com/modzmq/modzmq/bridge"
)

// keepCap is the largest buffer of bytes fed a Reader keeps once it is
// empty: an idle WebSocket holds no large buffer.
const keepCap = 4 << 10

// msgs holds the buffers of messages delivered and forgotten, for the next
// message of any Reader: an idle Reader holds no message buffer, and a busy
// one takes back a buffer instead of making one. Each buffer travels behind
// a pointer of its own, so that putting it back allocates nothing.
var msgs sync.Pool

// poolCap is the largest message buffer msgs takes back; a larger one is
// dropped once its message is forgotten.
const poolCap = 64 << 10

// Reader assembles a client's frames into messages. A front feeds it the
// bytes it reads from the client (Feed, at most Space at a time) and takes
// what they make with Next until Next has nothing more. Fragments are
// reassembled (control frames may come between them), payloads unmasked,
// text checked for UTF-8 as it comes, and every breach of RFC 6455 is an
// *Error with the close code to send: 1002 for a protocol error (an
// unmasked frame, reserved bits, an unknown opcode, a fragmented or long
// control frame, a continuation with no message to continue, a close
// payload of one byte or with a code a peer may not send), 1007 for text or
// a close reason that is not UTF-8, 1009 for a message over Max. It never
// holds more than Max plus FrameOverhead bytes, and while no message is
// under way (from the Next after one was delivered to its first payload
// bytes) no message buffer at all. The zero Reader is ready to use.
type Reader struct {
	// Max is the largest message, in bytes; zero means DefaultMax.
	Max int64

	buf []byte // bytes fed and not parsed yet: buf[pos:]
	pos int
	msg []byte // the payload of the message being assembled; nil before its first bytes
	// box is msg's buffer as msgs gave it (or as it was made), to go back
	// there; nil while msg is.
	box *[]byte
	// The message being assembled: how much of it is known to be UTF-8
	// (text), the data frame whose payload is being read (left: its bytes
	// still to come), and its kind (0: none; beside the flags below, in
	// what would be padding).
	checked   int
	hdr       ws.Header
	left      int64
	kind      Kind
	inFrame   bool
	delivered bool // msg was handed out: forget it at the next Next
	closed    bool // a close came: nothing more is read
	err       error
	hr        headerReader
}

func (r *Reader) max() int64 {
	if r.Max > 0 {
		return r.Max
	}
	return DefaultMax
}

// Space is how many more bytes the front may Feed.
func (r *Reader) Space() int64 {
	held := int64(len(r.buf) - r.pos)
	if !r.delivered {
		held += int64(len(r.msg))
	}
	return max(r.max()+FrameOverhead-held, 0)
}

// Feed adds bytes read from the client. The Reader copies them.
func (r *Reader) Feed(b []byte) {
	if r.err != nil || r.closed {
		return
	}
	r.buf = append(r.buf, b...)
}

// Idle reports whether the Reader holds nothing: no bytes fed and not
// taken, no message begun (a front may then parse a whole message itself).
func (r *Reader) Idle() bool {
	return r.err == nil && !r.closed && len(r.buf) == r.pos && !r.inFrame && (r.kind == 0 || r.delivered)
}

// Closed reports whether the client's close has come (Next returned it).
func (r *Reader) Closed() bool { return r.closed }

// Next returns the next message or control frame the bytes fed so far
// make; ok false when they make none yet (Feed more). After an error or a
// Close, Next returns nothing more: the error again, or ok false.
func (r *Reader) Next() (ev Event, ok bool, err error) {
	if r.err != nil {
		return Event{}, false, r.err
	}
	if r.closed {
		r.buf, r.pos = nil, 0
		r.release()
		return Event{}, false, nil
	}
	if r.delivered {
		r.kind, r.checked, r.delivered = 0, 0, false
		r.release()
	}
	if r.pos > 0 {
		n := copy(r.buf, r.buf[r.pos:])
		r.buf, r.pos = r.buf[:n], 0
		if n == 0 && cap(r.buf) > keepCap {
			r.buf = nil
		}
	}
	ev, ok, err = r.next()
	if err != nil {
		r.err = err
		r.buf, r.pos = nil, 0
		r.release()
		return Event{}, false, err
	}
	return ev, ok, nil
}

func (r *Reader) next() (Event, bool, error) {
	for {
		if r.inFrame {
			if done, err := r.payload(); err != nil || !done {
				return Event{}, false, err
			}
			r.inFrame = false
			if !r.hdr.Fin {
				continue
			}
			if r.kind == Text && !utf8.Valid(r.msg[r.checked:]) {
				return Event{}, false, fail(CloseInvalidData, "a text message that is not UTF-8")
			}
			r.delivered = true
			return Event{Kind: r.kind, Data: r.msg}, true, nil
		}
		h, n, err := r.header()
		if err != nil || n == 0 {
			return Event{}, false, err
		}
		state := ws.StateServerSide
		if r.kind != 0 {
			state |= ws.StateFragmented
		}
		if err := ws.CheckHeader(h, state); err != nil {
			return Event{}, false, fail(CloseProtocolError, err.Error())
		}
		if h.OpCode.IsControl() {
			if len(r.buf)-r.pos < n+int(h.Length) {
				return Event{}, false, nil
			}
			p := r.buf[r.pos+n : r.pos+n+int(h.Length)]
			r.pos += n + len(p)
			ws.Cipher(p, h.Mask, 0)
			return r.control(h.OpCode, p)
		}
		if r.kind == 0 {
			r.kind = Binary
			if h.OpCode == ws.OpText {
				r.kind = Text
			}
		}
		if int64(len(r.msg))+h.Length > r.max() {
			return Event{}, false, fail(CloseTooBig, "a message over the limit")
		}
		r.pos += n
		r.hdr, r.left, r.inFrame = h, h.Length, true
	}
}

// header parses the frame header at buf[pos:], returning its size; 0 when
// it is not all there yet.
func (r *Reader) header() (ws.Header, int, error) {
	b := r.buf[r.pos:]
	if len(b) < 2 {
		return ws.Header{}, 0, nil
	}
	n := 2
	if b[1]&0x80 != 0 {
		n += 4
	}
	switch b[1] & 0x7f {
	case 126:
		n += 2
	case 127:
		n += 8
	}
	if len(b) < n {
		return ws.Header{}, 0, nil
	}
	r.hr = headerReader(b[:n])
	h, err := ws.ReadHeader(&r.hr)
	if err != nil {
		return ws.Header{}, 0, fail(CloseProtocolError, err.Error())
	}
	return h, n, nil
}

// take gives msg a buffer from msgs for a message's first bytes: all of
// it, or as much as Max allows.
func (r *Reader) take() {
	box, _ := msgs.Get().(*[]byte)
	if box == nil {
		box = new([]byte)
	}
	r.box, r.msg = box, (*box)[:0:min(cap(*box), int(r.max()))]
}

// release forgets msg, its buffer going back to msgs unless it is over
// poolCap.
func (r *Reader) release() {
	if r.box == nil {
		return
	}
	if cap(r.msg) > cap(*r.box) {
		*r.box = r.msg[:0] // grown past the buffer taken
	}
	if c := cap(*r.box); c > 0 && c <= poolCap {
		msgs.Put(r.box)
	}
	r.box, r.msg = nil, nil
}

// payload moves what has come of the current data frame's payload into
// msg, unmasked; done when the frame's payload is complete.
func (r *Reader) payload() (done bool, err error) {
	n := min(r.left, int64(len(r.buf)-r.pos))
	if n > 0 {
		if r.box == nil {
			r.take()
		}
		start := len(r.msg)
		if need := start + int(n); need > cap(r.msg) {
			// Grow as append would, but never past Max.
			grown := make([]byte, start, min(max(need, 2*cap(r.msg), 512), int(r.max())))
			copy(grown, r.msg)
			r.msg = grown
		}
		r.msg = append(r.msg, r.buf[r.pos:r.pos+int(n)]...)
		ws.Cipher(r.msg[start:], r.hdr.Mask, int(r.hdr.Length-r.left))
		r.pos += int(n)
		r.left -= n
		if r.kind == Text && !r.checkText() {
			return false, fail(CloseInvalidData, "a text message that is not UTF-8")
		}
	}
	return r.left == 0, nil
}

// checkText checks the text received so far, but for a character that may
// still be incomplete at its end.
func (r *Reader) checkText() bool {
	v := r.msg[r.checked:]
	for i := len(v) - 1; i >= 0 && i >= len(v)-utf8.UTFMax; i-- {
		if utf8.RuneStart(v[i]) {
			if !utf8.FullRune(v[i:]) {
				v = v[:i]
			}
			break
		}
	}
	if !utf8.Valid(v) {
		return false
	}
	r.checked += len(v)
	return true
}

// control returns a control frame's event.
func (r *Reader) control(op ws.OpCode, p []byte) (Event, bool, error) {
	switch op {
	case ws.OpPing:
		return Event{Kind: Ping, Data: p}, true, nil
	case ws.OpPong:
		return Event{Kind: Pong, Data: p}, true, nil
	}
	// A close.
	switch {
	case len(p) == 0:
		r.closed = true
		return Event{Kind: Close, Code: CloseNoStatus}, true, nil
	case len(p) == 1:
		return Event{}, false, fail(CloseProtocolError, "a close payload of one byte")
	}
	code := int(binary.BigEndian.Uint16(p))
	if !bridge.ValidCloseCode(code) {
		return Event{}, false, fail(CloseProtocolError, "a close code a peer may not send")
	}
	if !utf8.Valid(p[2:]) {
		return Event{}, false, fail(CloseInvalidData, "a close reason that is not UTF-8")
	}
	r.closed = true
	return Event{Kind: Close, Code: code, Reason: p[2:]}, true, nil
}

// headerReader hands ws.ReadHeader a header that is all there.
type headerReader []byte

func (h *headerReader) Read(p []byte) (int, error) {
	if len(*h) == 0 {
		return 0, io.EOF
	}
	n := copy(p, *h)
	*h = (*h)[n:]
	return n, nil
}
