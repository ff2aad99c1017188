package worker

import (
	"fmt"
	"net"
	"os"
	"path/filepath"
	"strings"
	"testing"
	"time"
)

// echoOnce sends one MZMQ/1-shaped message on a libzmq DEALER connected to
// endpoint and checks that it comes back.
func echoOnce(t *testing.T, endpoint string) {
	t.Helper()
	d := dealer(t, endpoint, 0)
	if _, err := d.SendMessage("", "MZMQ/1", "over "+endpoint); err != nil {
		t.Fatal(err)
	}
	msg, err := d.RecvMessage(0)
	if err != nil || len(msg) != 3 || msg[2] != "over "+endpoint {
		t.Fatalf("%s: got %q, %v", endpoint, msg, err)
	}
}

// ipc:// endpoints, as libzmq's fronts connect to them: a path, and a name
// in Linux's abstract namespace.
func TestIPCWithLibzmq(t *testing.T) {
	path := filepath.Join(t.TempDir(), "w.sock")
	e := startEchoAt(t, "ipc://"+path, Options{})
	echoOnce(t, "ipc://"+path)
	abstract := fmt.Sprintf("ipc://@modzmq-worker-test-%d-%d", os.Getpid(), time.Now().UnixNano())
	startEchoAt(t, abstract, Options{})
	echoOnce(t, abstract)

	// A peer that is no front is logged with where it came in.
	c, err := net.Dial("unix", path)
	if err != nil {
		t.Fatal(err)
	}
	c.Write([]byte("GET / HTTP/1.1\r\nHost: x\r\n\r\n" + strings.Repeat("x", 64)))
	want := "MODZMQ0501 worker: connection from ipc://" + path + " ended"
	waitFor(t, "the log line", func() bool { return strings.Contains(e.log.String(), want) })
	c.Close()

	e.Close()
	if _, err := os.Lstat(path); !os.IsNotExist(err) {
		t.Errorf("Close left %s (%v)", path, err)
	}
}

// A socket file that a killed worker left is replaced; one a live process
// listens on, or a file that is not a socket, is not.
func TestIPCBindOverExistingFiles(t *testing.T) {
	dir := t.TempDir()

	stale := filepath.Join(dir, "stale.sock")
	l, err := net.Listen("unix", stale)
	if err != nil {
		t.Fatal(err)
	}
	l.(*net.UnixListener).SetUnlinkOnClose(false)
	l.Close() // the file stays, with nothing listening: a killed worker's
	startEchoAt(t, "ipc://"+stale, Options{})
	echoOnce(t, "ipc://"+stale)

	live := filepath.Join(dir, "live.sock")
	other, err := net.Listen("unix", live)
	if err != nil {
		t.Fatal(err)
	}
	defer other.Close()
	if srv, err := Listen("ipc://"+live, nil, nil); err == nil {
		srv.Close()
		t.Fatal("bound over a live listener's socket")
	}
	go func() {
		if c, err := other.Accept(); err == nil {
			c.Close()
		}
	}()
	if c, err := net.Dial("unix", live); err != nil {
		t.Errorf("the live listener lost its socket: %v", err)
	} else {
		c.Close()
	}

	plain := filepath.Join(dir, "plain")
	os.WriteFile(plain, []byte("data"), 0o644)
	if srv, err := Listen("ipc://"+plain, nil, nil); err == nil {
		srv.Close()
		t.Fatal("bound over a regular file")
	}
	if b, err := os.ReadFile(plain); err != nil || string(b) != "data" {
		t.Errorf("the regular file was touched: %q, %v", b, err)
	}
}

func TestListenRefusesOtherEndpoints(t *testing.T) {
	for _, ep := range []string{"ipc://", "ipc://*", "ipc://@", "inproc://x", "udp://127.0.0.1:1", "127.0.0.1:5555"} {
		if srv, err := Listen(ep, nil, nil); err == nil {
			srv.Close()
			t.Errorf("%q: bound", ep)
		} else if !strings.Contains(err.Error(), "want tcp://host:port, ipc://path or ipc://@name") {
			t.Errorf("%q: %v", ep, err)
		}
	}
}
