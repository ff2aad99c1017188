// Package wsproto is the client side of WebSockets (RFC 6455) for every
// front: the handshake's checks and accept key, a reader that assembles a
// client's masked frames into messages, and the server's frames. It does no
// I/O: a front feeds it the bytes it read and writes the bytes it appends.
// Frame headers, masking and close bodies are github.com/gobwas/ws's.
package wsproto

import (
	"crypto/sha1"
	"encoding/base64"
	"strings"

	"github.com/gobwas/ws"
)

// DefaultMax is the largest message a Reader takes when its Max is zero.
const DefaultMax = 16 << 20

// FrameOverhead is what a Reader may hold beyond its Max: one frame header
// and one control frame's payload.
const FrameOverhead = ws.MaxHeaderSize + ws.MaxControlFramePayloadSize

// Close codes a Reader's errors carry (RFC 6455 section 7.4.1).
const (
	CloseProtocolError = 1002
	CloseNoStatus      = 1005
	CloseInvalidData   = 1007
	CloseTooBig        = 1009
)

// Kind is what a message or control frame is.
type Kind uint8

const (
	Text Kind = iota + 1
	Binary
	Ping
	Pong
	Close
)

var kindNames = [...]string{"", "text", "binary", "ping", "pong", "close"}

func (k Kind) String() string {
	if int(k) < len(kindNames) {
		return kindNames[k]
	}
	return "unknown"
}

func (k Kind) opCode() ws.OpCode {
	switch k {
	case Text:
		return ws.OpText
	case Binary:
		return ws.OpBinary
	case Ping:
		return ws.OpPing
	case Pong:
		return ws.OpPong
	}
	return ws.OpClose
}

// Event is a whole message (Text, Binary) or a control frame (Ping, Pong,
// Close) from the client. Data (and Reason) stay valid until the next call
// to the Reader's Next; after it a message's buffer may be any Reader's
// (another goroutine's too), so a front copies what it keeps longer.
type Event struct {
	Kind   Kind
	Data   []byte // Text, Binary, Ping and Pong payloads
	Code   int    // Close: the client's code; CloseNoStatus when it gave none
	Reason []byte // Close
}

// Error is a client's breach of RFC 6455: the front closes the WebSocket
// with Code (1002, 1007 or 1009) and tells the worker so.
type Error struct {
	Code   int
	Reason string
}

func (e *Error) Error() string { return "websocket: " + e.Reason }

func fail(code int, reason string) *Error { return &Error{Code: code, Reason: reason} }

// The GUID of RFC 6455 section 1.3, which the accept key hashes.
const acceptGUID = "258EAFA5-E914-47DA-95CA-C5AB0DC85B11"

// AcceptKey is the Sec-WebSocket-Accept value answering key.
func AcceptKey(key string) string {
	h := sha1.Sum([]byte(key + acceptGUID))
	return base64.StdEncoding.EncodeToString(h[:])
}

// IsUpgrade reports whether a request asks for a WebSocket (its Upgrade
// header names websocket): such a request is a handshake, to be checked
// with CheckHandshake. header returns a header's values joined by ", ".
func IsUpgrade(header func(name string) string) bool {
	return hasToken(header("Upgrade"), "websocket")
}

// CheckHandshake checks an HTTP/1.1 WebSocket handshake (RFC 6455 section
// 4.2.1): method GET, Upgrade: websocket, a Connection header with the
// upgrade token, Sec-WebSocket-Version 13 and a Sec-WebSocket-Key of 16
// bytes in base64. header returns a header's values joined by ", ". It
// returns the key and the offered subprotocols (the Sec-WebSocket-Protocol
// values, "" for none), or the status to refuse the handshake with and
// why: 400, or 426 for another version (the answer then carries
// Sec-WebSocket-Version: 13).
func CheckHandshake(method string, header func(name string) string) (key, protocols string, status int, err error) {
	switch {
	case method != "GET":
		return "", "", 400, fail(CloseProtocolError, "a WebSocket handshake is a GET, not "+method)
	case !hasToken(header("Upgrade"), "websocket"):
		return "", "", 400, fail(CloseProtocolError, "a WebSocket handshake needs Upgrade: websocket")
	case !hasToken(header("Connection"), "upgrade"):
		return "", "", 400, fail(CloseProtocolError, "a WebSocket handshake needs Connection: upgrade")
	case strings.TrimSpace(header("Sec-WebSocket-Version")) != "13":
		return "", "", 426, fail(CloseProtocolError, "WebSocket version 13 only")
	}
	key = strings.TrimSpace(header("Sec-WebSocket-Key"))
	if b, err := base64.StdEncoding.DecodeString(key); err != nil || len(b) != 16 {
		return "", "", 400, fail(CloseProtocolError, "a Sec-WebSocket-Key is 16 bytes in base64")
	}
	return key, strings.TrimSpace(header("Sec-WebSocket-Protocol")), 0, nil
}

// hasToken reports whether the comma-separated list v holds token, case
// insensitively.
func hasToken(v, token string) bool {
	for t := range strings.SplitSeq(v, ",") {
		if strings.EqualFold(strings.TrimSpace(t), token) {
			return true
		}
	}
	return false
}

// OriginAllowed reports whether a handshake with Origin origin may go on:
// allowed empty allows every origin, a handshake without Origin (not from a
// browser) is allowed, and otherwise origin must equal one of allowed
// (scheme://host[:port]), ASCII case aside.
func OriginAllowed(origin string, allowed []string) bool {
	if len(allowed) == 0 || origin == "" {
		return true
	}
	for _, a := range allowed {
		if strings.EqualFold(origin, a) {
			return true
		}
	}
	return false
}
