// Package zmtpwire holds the ZMTP 3.1 bytes both of the project's Go ZMTP
// peers send first: the bridge's client (bridge/zmtp.go) and the worker
// package's server (worker/conn.go).
package zmtpwire

// Greeting is a ZMTP 3.1 greeting for the NULL mechanism, as-server 0.
var Greeting = func() []byte {
	g := make([]byte, 64)
	g[0], g[8], g[9], g[10], g[11] = 0xff, 1, 0x7f, 3, 1 // signature, version 3.1
	copy(g[12:], "NULL")
	return g
}()

// Ready returns the NULL mechanism's READY command (its frame header
// included) naming socketType, the one property the peers send.
func Ready(socketType string) []byte {
	body := append([]byte("\x05READY\x0bSocket-Type"), 0, 0, 0, byte(len(socketType)))
	body = append(body, socketType...)
	return append([]byte{0x04, byte(len(body))}, body...)
}
