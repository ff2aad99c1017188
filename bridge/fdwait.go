package bridge

import (
	"errors"
	"os"
	"syscall"
	"time"

	"golang.org/x/sys/unix"
)

// FDWaiter parks goroutines in Go's netpoller until a descriptor becomes
// readable — libzmq's ZMQ_FD, whose readiness only says that a socket's
// events may have changed (read ZMQ_EVENTS after every wake-up) — instead
// of blocking an OS thread in zmq_poll.
type FDWaiter struct {
	f   *os.File
	raw syscall.RawConn
}

// NewFDWaiter watches a dup of fd; the caller keeps fd. It fails when the
// netpoller cannot watch the descriptor.
func NewFDWaiter(fd int) (*FDWaiter, error) {
	fd, err := syscall.Dup(fd)
	if err != nil {
		return nil, err
	}
	syscall.CloseOnExec(fd)
	syscall.SetNonblock(fd, true) // libzmq's already is; the netpoller needs it
	f := os.NewFile(uintptr(fd), "zmq-fd")
	raw, err := f.SyscallConn()
	if err == nil {
		err = f.SetReadDeadline(time.Time{}) // fails unless the netpoller took it
	}
	if err != nil {
		f.Close()
		return nil, err
	}
	return &FDWaiter{f: f, raw: raw}, nil
}

// SetDeadline bounds Wait; another goroutine may move it (to now, to wake
// the waiter at once).
func (w *FDWaiter) SetDeadline(t time.Time) error { return w.f.SetReadDeadline(t) }

// Wait parks until the descriptor is readable or the deadline passes (not
// an error).
func (w *FDWaiter) Wait() error {
	first := true
	err := w.raw.Read(func(fd uintptr) bool {
		if !first {
			return true
		}
		first = false
		// The netpoller forgets a readiness that arrived before this call
		// (RawConn.Read resets it before it first asks), so look at the
		// descriptor itself: without this, a signal libzmq sent between the
		// caller's last look at ZMQ_EVENTS and here was lost, and the
		// caller slept to its deadline with work waiting.
		return readable(int(fd))
	})
	if errors.Is(err, os.ErrDeadlineExceeded) {
		return nil
	}
	return err
}

// readable reports whether fd is readable now, without reading it.
func readable(fd int) bool {
	p := []unix.PollFd{{Fd: int32(fd), Events: unix.POLLIN}}
	for {
		n, err := unix.Poll(p, 0)
		if err != unix.EINTR {
			return err == nil && n > 0 && p[0].Revents != 0
		}
	}
}

// Close stops watching; the original descriptor stays open.
func (w *FDWaiter) Close() error { return w.f.Close() }
