package test

import (
	"encoding/json"
	"fmt"
	"io"
	"net/http"
	"os"
	"os/exec"
	"path/filepath"
	"strings"
	"sync"
	"sync/atomic"
	"syscall"
	"testing"
	"time"
)

// SIGHUP makes zmq-gateway read its file again, in both modes: routes and
// backends change under load without one failed request, a request in
// flight across the reload finishes, a bad file is logged and the old
// routes serve on, and the access log is opened again after logrotate
// moved it.
func TestGatewayReloadsOnSIGHUP(t *testing.T) {
	for _, mode := range []string{"", "stream"} {
		t.Run("mode="+mode, func(t *testing.T) { testReload(t, mode) })
	}
}

func testReload(t *testing.T, mode string) {
	requireBuilt(t, "zmq-gateway")
	a, b := startPyWorker(t, "a"), startPyWorker(t, "b")
	dir := t.TempDir()
	conf, accessLog := filepath.Join(dir, "gateway.yaml"), filepath.Join(dir, "access.log")
	addr := fmt.Sprintf("127.0.0.1:%d", freePort(t))
	write := func(routes string) {
		text := fmt.Sprintf("listen: %s\naccess_log: %s\nroutes:\n%s", addr, accessLog, routes)
		if err := os.WriteFile(conf, []byte(text), 0o644); err != nil {
			t.Fatal(err)
		}
	}
	write(fmt.Sprintf("  - prefix: /a\n    backend: [%s]\n", a.Endpoint))
	stderr := &syncBuffer{}
	args := []string{"-config", conf}
	if mode != "" {
		args = append([]string{mode}, args...)
	}
	cmd := exec.Command(buildPath("zmq-gateway"), args...)
	cmd.Stderr = stderr
	if err := cmd.Start(); err != nil {
		t.Fatal(err)
	}
	exited := make(chan error, 1)
	go func() { exited <- cmd.Wait() }()
	t.Cleanup(func() {
		cmd.Process.Signal(syscall.SIGTERM)
		select {
		case <-exited:
		case <-time.After(15 * time.Second):
			cmd.Process.Kill()
		}
	})
	url := "http://" + addr
	workerOf := func(path string) (string, error) {
		resp, err := http.Get(url + path)
		if err != nil {
			return "", err
		}
		defer resp.Body.Close()
		var doc struct{ Worker string }
		body, _ := io.ReadAll(resp.Body)
		if resp.StatusCode != 200 || json.Unmarshal(body, &doc) != nil {
			return "", fmt.Errorf("GET %s: %d %q", path, resp.StatusCode, body)
		}
		return doc.Worker, nil
	}
	checkFor(t, 10*time.Second, func() error { _, err := workerOf("/a/x"); return err })

	// Load all along: four clients on keep-alive connections.
	var failures, served atomic.Int64
	var firstFailure atomic.Value
	stop := make(chan struct{})
	var wg sync.WaitGroup
	for i := 0; i < 4; i++ {
		wg.Add(1)
		go func() {
			defer wg.Done()
			for {
				select {
				case <-stop:
					return
				default:
				}
				if _, err := workerOf("/a/x"); err != nil {
					failures.Add(1)
					firstFailure.CompareAndSwap(nil, err.Error())
				} else {
					served.Add(1)
				}
			}
		}()
	}
	reloads := 0
	hup := func(wantLog string) {
		t.Helper()
		before := strings.Count(stderr.String(), wantLog)
		reloads++
		if err := cmd.Process.Signal(syscall.SIGHUP); err != nil {
			t.Fatal(err)
		}
		checkFor(t, 10*time.Second, func() error {
			if strings.Count(stderr.String(), wantLog) <= before {
				return fmt.Errorf("no %q after SIGHUP %d:\n%s", wantLog, reloads, stderr)
			}
			return nil
		})
	}

	// A slow request in flight across a reload finishes.
	slow := make(chan error, 1)
	go func() { _, err := workerOf("/a/sleep?ms=1500"); slow <- err }()
	time.Sleep(200 * time.Millisecond) // let it reach the worker (a failure below would show as a 404)

	for round := 0; round < 3; round++ {
		// /a moves to worker b, and /b appears on worker a; then back.
		write(fmt.Sprintf("  - prefix: /a\n    backend: [%s]\n  - prefix: /b\n    backend: [%s]\n", b.Endpoint, a.Endpoint))
		hup("MODZMQ0210: reloaded")
		if w, err := workerOf("/a/x"); err != nil || w != "b" {
			t.Errorf("after reload %d, /a went to %q (%v), want b", reloads, w, err)
		}
		if w, err := workerOf("/b/x"); err != nil || w != "a" {
			t.Errorf("after reload %d, /b went to %q (%v), want a", reloads, w, err)
		}
		write(fmt.Sprintf("  - prefix: /a\n    backend: [%s]\n", a.Endpoint))
		hup("MODZMQ0210: reloaded")
		if w, err := workerOf("/a/x"); err != nil || w != "a" {
			t.Errorf("after reload %d, /a went to %q (%v), want a", reloads, w, err)
		}
	}
	if err := <-slow; err != nil {
		t.Errorf("a request in flight across reloads: %v", err)
	}

	// A bad file: logged, and the routes in service stay.
	write("  - prefix: /a\n    backend: [tcp://127.0.0.1:1]\n    timeout: soon\n")
	hup("MODZMQ0211: reload: the configuration in service stays")
	if !strings.Contains(stderr.String(), `duration \"soon\"`) {
		t.Errorf("the log does not say what is wrong with the file:\n%s", stderr)
	}
	if w, err := workerOf("/a/x"); err != nil || w != "a" {
		t.Errorf("after a bad reload, /a went to %q (%v), want a", w, err)
	}

	// logrotate: the log is moved, then SIGHUP opens it again.
	write(fmt.Sprintf("  - prefix: /a\n    backend: [%s]\n", a.Endpoint))
	if err := os.Rename(accessLog, accessLog+".1"); err != nil {
		t.Fatal(err)
	}
	hup("MODZMQ0210: reloaded")
	checkFor(t, 10*time.Second, func() error {
		b, _ := os.ReadFile(accessLog)
		if !strings.Contains(string(b), `"GET /a/x HTTP/1.1" 200`) {
			return fmt.Errorf("the reopened access log has no new lines: %q", b)
		}
		return nil
	})
	close(stop)
	wg.Wait()
	if n := failures.Load(); n != 0 {
		t.Errorf("%d of %d requests failed across %d reloads; the first: %v", n, n+served.Load(), reloads, firstFailure.Load())
	}
	if served.Load() == 0 {
		t.Error("the load served nothing")
	}
	if old, _ := os.ReadFile(accessLog + ".1"); !strings.Contains(string(old), `"GET /a/x HTTP/1.1" 200`) {
		t.Error("the rotated access log has no lines from before the rotation")
	}
	select {
	case err := <-exited:
		t.Fatalf("zmq-gateway exited: %v\n%s", err, stderr)
	default:
	}
	t.Logf("%d requests served across %d reloads", served.Load(), reloads)
}

// SIGHUP does not end the broker (a service reload, logrotate): it says it
// has nothing to read again, and serves on.
func TestBrokerTakesSIGHUP(t *testing.T) {
	requireBuilt(t, "zmq-gateway")
	front, back := freePort(t), freePort(t)
	stderr := &syncBuffer{}
	cmd := exec.Command(buildPath("zmq-gateway"), "broker", "-frontend", fmt.Sprintf("tcp://127.0.0.1:%d", front),
		"-backend", fmt.Sprintf("tcp://127.0.0.1:%d", back))
	cmd.Stderr = stderr
	if err := cmd.Start(); err != nil {
		t.Fatal(err)
	}
	exited := make(chan error, 1)
	go func() { exited <- cmd.Wait() }()
	defer func() {
		cmd.Process.Signal(syscall.SIGTERM)
		select {
		case <-exited:
		case <-time.After(10 * time.Second):
			cmd.Process.Kill()
		}
	}()
	checkFor(t, 10*time.Second, func() error { // started: SIGHUP is handled from here on
		if !strings.Contains(stderr.String(), "level=") {
			return fmt.Errorf("the broker has logged nothing yet")
		}
		return nil
	})
	for i := 1; i <= 2; i++ { // one at a time: signals sent together may arrive as one
		if err := cmd.Process.Signal(syscall.SIGHUP); err != nil {
			t.Fatal(err)
		}
		checkFor(t, 10*time.Second, func() error {
			if strings.Count(stderr.String(), "MODZMQ0210: SIGHUP: the broker has no file") < i {
				return fmt.Errorf("no MODZMQ0210 line for SIGHUP %d:\n%s", i, stderr)
			}
			return nil
		})
	}
	select {
	case err := <-exited:
		t.Fatalf("the broker exited on SIGHUP: %v\n%s", err, stderr)
	default:
	}
}
