package wsproto

import (
	"github.com/gobwas/ws"
)

// AppendFrame appends a server frame (unmasked, final) carrying payload as
// a whole message of kind Text or Binary, or a Ping or Pong (whose payload
// must be at most 125 bytes).
func AppendFrame(dst []byte, kind Kind, payload []byte) []byte {
	if n := ws.MaxHeaderSize + len(payload); cap(dst)-len(dst) < n {
		dst = append(make([]byte, 0, len(dst)+n), dst...)
	}
	return append(AppendHeader(dst, kind, len(payload)), payload...)
}

// AppendHeader appends the header of a server frame as AppendFrame's, for
// a payload of n bytes the front writes after it itself (a large message
// is then not copied).
func AppendHeader(dst []byte, kind Kind, n int) []byte {
	w := appender{dst}
	ws.WriteHeader(&w, ws.Header{Fin: true, OpCode: kind.opCode(), Length: int64(n)})
	return w.b
}

// AppendPing appends a ping carrying payload (at most 125 bytes).
func AppendPing(dst, payload []byte) []byte { return AppendFrame(dst, Ping, payload) }

// AppendPong appends a pong answering a ping's payload.
func AppendPong(dst, payload []byte) []byte { return AppendFrame(dst, Pong, payload) }

// AppendClose appends a close frame with code and reason (cut to the 123
// bytes a close has room for); code 0 or CloseNoStatus sends no code.
func AppendClose(dst []byte, code int, reason []byte) []byte {
	var body [ws.MaxControlFramePayloadSize]byte
	if code == 0 || code == CloseNoStatus {
		return AppendFrame(dst, Close, nil)
	}
	reason = reason[:min(len(reason), len(body)-2)]
	ws.PutCloseFrameBody(body[:], ws.StatusCode(code), string(reason))
	return AppendFrame(dst, Close, body[:2+len(reason)])
}

// appender is an io.Writer that appends to b.
type appender struct{ b []byte }

func (a *appender) Write(p []byte) (int, error) {
	a.b = append(a.b, p...)
	return len(p), nil
}
