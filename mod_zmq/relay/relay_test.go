//go:build modzmq_test

package relay

import (
	"fmt"
	"testing"
	"time"

	"github.com/modzmq/modzmq/internal/zmqtest"
)

// A reply Go receives itself (it was already queued when the call stepped
// after a wait ran out) reaches the caller whole: status, reason, headers
// and body, copied into C memory because they are not in the frames the
// wait received. It once came back with an empty body.
func TestReplyReceivedByGoKeepsItsParts(t *testing.T) {
	ep := zmqtest.ROUTER(t, func(msg [][]byte, reply func([][]byte)) {
		// msg: routing id, request id, "", "MZMQ/1", method, target, ...
		if len(msg) < 6 {
			return
		}
		// Longer than the fast path's first wait (100 ms), so later
		// requests are handed to Go with nothing received.
		time.Sleep(150 * time.Millisecond)
		reply([][]byte{msg[0], msg[1], {}, []byte("201 Made"), []byte("X-Target: " + string(msg[5]) + "\r\n"), msg[5]})
	})
	h, msg := openTestClient(ep)
	if h == 0 {
		t.Fatalf("backend: %s", msg)
	}
	for i := range 4 {
		target := fmt.Sprintf("/r?n=%d", i)
		got := relayLeavingReplyQueued(h, target)
		if got.rc != 0 {
			t.Fatalf("request %d: code %d: %s", i, got.rc, got.err)
		}
		if got.status != 201 || string(got.reason) != "Made" || string(got.headers) != "X-Target: "+target+"\r\n" || string(got.body) != target {
			t.Fatalf("request %d: got %d %q %q %q, want 201 \"Made\" \"X-Target: %s\\r\\n\" %q",
				i, got.status, got.reason, got.headers, got.body, target, target)
		}
	}
}
