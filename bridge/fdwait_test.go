package bridge

import (
	"syscall"
	"testing"
	"time"
)

// A descriptor that became readable while nobody waited must still end the
// next Wait: Go's netpoller drops the readiness it recorded when a read
// begins, and libzmq signals ZMQ_FD only once.
func TestFDWaiterSeesReadinessFromBeforeTheWait(t *testing.T) {
	var p [2]int
	if err := syscall.Pipe2(p[:], syscall.O_NONBLOCK|syscall.O_CLOEXEC); err != nil {
		t.Fatal(err)
	}
	defer syscall.Close(p[0])
	defer syscall.Close(p[1])
	w, err := NewFDWaiter(p[0])
	if err != nil {
		t.Fatal(err)
	}
	defer w.Close()
	// Park once, so the descriptor is in the netpoller with nothing pending.
	w.SetDeadline(time.Now().Add(10 * time.Millisecond))
	if err := w.Wait(); err != nil {
		t.Fatal(err)
	}
	syscall.Write(p[1], []byte{1})
	time.Sleep(50 * time.Millisecond) // the netpoller records the edge meanwhile
	w.SetDeadline(time.Now().Add(time.Hour))
	done := make(chan error, 1)
	go func() { done <- w.Wait() }()
	select {
	case err := <-done:
		if err != nil {
			t.Fatal(err)
		}
	case <-time.After(10 * time.Second):
		w.SetDeadline(time.Now())
		<-done
		t.Fatal("Wait slept through a readiness that came before it (it would have slept an hour)")
	}
}
