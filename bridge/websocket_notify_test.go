package bridge

import (
	"testing"
	"time"
)

// Notify calls back when the worker's message is queued, so that a front
// can take it with Recv(0) without a goroutine waiting on Ready; after
// Close there is no connection to call back from.
func TestWebSocketNotify(t *testing.T) {
	got := make(chan string, 10)
	c := newTestClient(t, Options{Endpoints: []string{wsWorker(t, got)}})
	resp, err := openWS(t, c, "/ok", "")
	if err != nil || resp.WebSocket == nil {
		t.Fatalf("handshake: %d %v", resp.Status, err)
	}
	ws := resp.WebSocket
	woken := make(chan struct{}, 100)
	if !ws.Notify(func() { woken <- struct{}{} }) {
		t.Fatal("Notify on a shared connection reports no call back")
	}
	if err := ws.Send(Message{Kind: Text, Data: []byte("hello")}); err != nil {
		t.Fatal(err)
	}
	var m Message
	for deadline := time.Now().Add(10 * time.Second); m.Kind == 0; {
		select {
		case <-woken:
		case <-time.After(time.Until(deadline)):
			t.Fatal("no call back for the worker's echo")
		}
		var ok bool
		if m, ok, err = ws.Recv(0); err != nil {
			t.Fatal(err)
		} else if !ok {
			m = Message{} // the worker's credit: absorbed
		}
	}
	if m.Kind != Text || string(m.Data) != "hello" {
		t.Errorf("after the call back Recv(0) gave kind %d %q, want the echo", m.Kind, m.Data)
	}
	ws.Close(CloseNormal, nil)
	if ws.Notify(func() {}) {
		t.Error("Notify after Close reports a call back")
	}
}
