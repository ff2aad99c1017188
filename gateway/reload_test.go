package gateway

import (
	"net/http"
	"net/http/httptest"
	"testing"
	"time"
)

// A request keeps the gateway that took it open across Replace; new
// requests go to the new one, and the old one closes after its last.
func TestLiveReplaceWaitsForRequestsInFlight(t *testing.T) {
	g1, err := New(&Config{}, nil)
	if err != nil {
		t.Fatal(err)
	}
	g2, err := New(&Config{}, nil)
	if err != nil {
		t.Fatal(err)
	}
	lv := NewLive(g1)
	inside, leave := make(chan *Gateway), make(chan struct{})
	go lv.Do(func(g *Gateway) { inside <- g; <-leave })
	if g := <-inside; g != g1 {
		t.Fatal("a request before Replace did not run on the first gateway")
	}
	closed := make(chan struct{})
	lv.Replace(g2, closed)
	lv.Do(func(g *Gateway) {
		if g != g2 {
			t.Error("a request after Replace did not run on the new gateway")
		}
	})
	select {
	case <-closed:
		t.Fatal("the old gateway closed with a request in flight")
	case <-time.After(50 * time.Millisecond):
	}
	close(leave)
	select {
	case <-closed:
	case <-time.After(10 * time.Second):
		t.Fatal("the old gateway did not close after its last request")
	}
	rec := httptest.NewRecorder()
	lv.ServeHTTP(rec, httptest.NewRequest("GET", "/nothing", nil))
	if rec.Code != http.StatusNotFound {
		t.Errorf("the new gateway (no routes) answered %d, want 404", rec.Code)
	}
}
