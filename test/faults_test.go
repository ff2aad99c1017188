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

// load sends GETs with unique ids from several goroutines and accounts for
// every one: its own reply, an error status, or a transport error (which
// includes a hang past the client's 30 s timeout).
type load struct {
	ok, errStatus, transport, mismatch, sent atomic.Int64
	mu                                       sync.Mutex
	statuses                                 map[int]int
	errs                                     []string
	wrong                                    []string // what some mismatched requests got
	stop                                     chan struct{}
	wg                                       sync.WaitGroup
}

func startLoad(t *testing.T, url string, conc int) *load {
	l := &load{statuses: map[int]int{}, stop: make(chan struct{})}
	c := &http.Client{Timeout: 30 * time.Second, Transport: &http.Transport{MaxIdleConnsPerHost: conc}}
	for g := 0; g < conc; g++ {
		l.wg.Add(1)
		go func() {
			defer l.wg.Done()
			for i := 0; ; i++ {
				select {
				case <-l.stop:
					return
				default:
				}
				id := fmt.Sprintf("g%d-%d", g, i)
				l.sent.Add(1)
				resp, err := c.Get(url + "?id=" + id)
				if err != nil {
					l.transport.Add(1)
					l.mu.Lock()
					l.errs = append(l.errs, err.Error())
					l.mu.Unlock()
					continue
				}
				b, _ := io.ReadAll(resp.Body)
				resp.Body.Close()
				if resp.StatusCode != 200 {
					l.errStatus.Add(1)
					l.mu.Lock()
					l.statuses[resp.StatusCode]++
					l.mu.Unlock()
					time.Sleep(20 * time.Millisecond)
					continue
				}
				var e echo
				if json.Unmarshal(b, &e) != nil || !strings.HasSuffix(e.Target, "?id="+id) {
					l.mismatch.Add(1)
					l.mu.Lock()
					if len(l.wrong) < 3 {
						l.wrong = append(l.wrong, fmt.Sprintf("%s got %d %q", id, resp.StatusCode, b[:min(len(b), 200)]))
					}
					l.mu.Unlock()
					continue
				}
				l.ok.Add(1)
			}
		}()
	}
	return l
}

// finish stops the load and checks that every request had exactly one
// outcome and none got another request's reply or hung.
func (l *load) finish(t *testing.T) {
	t.Helper()
	close(l.stop)
	l.wg.Wait()
	sent, ok, bad, tr, mm := l.sent.Load(), l.ok.Load(), l.errStatus.Load(), l.transport.Load(), l.mismatch.Load()
	t.Logf("%d requests: %d ok, %d error statuses %v, %d transport errors, %d mismatched", sent, ok, bad, l.statuses, tr, mm)
	if mm > 0 {
		t.Errorf("%d requests got a reply that is not theirs: %q", mm, l.wrong)
	}
	if tr > 0 {
		t.Errorf("%d requests got no HTTP answer (hung or dropped): %v", tr, l.errs[:min(3, len(l.errs))])
	}
	if ok+bad+tr+mm != sent {
		t.Errorf("outcomes %d != requests %d", ok+bad+tr+mm, sent)
	}
}

// errorsDuring runs fn and returns how many error statuses arrived meanwhile.
func (l *load) errorsDuring(fn func()) int64 {
	before := l.errStatus.Load() + l.transport.Load()
	fn()
	return l.errStatus.Load() + l.transport.Load() - before
}

// waitOK waits until n more requests succeeded.
func (l *load) waitOK(t *testing.T, what string, n int64, d time.Duration) {
	t.Helper()
	target := l.ok.Load() + n
	checkFor(t, d, func() error {
		if l.ok.Load() < target {
			return fmt.Errorf("%s: %d of %d successes", what, l.ok.Load(), target)
		}
		return nil
	})
}

// waitServed waits until w's log shows a request it served after mark bytes.
func waitServed(t *testing.T, w *worker, mark int, what string) {
	t.Helper()
	checkFor(t, 20*time.Second, func() error {
		if !strings.Contains(w.Output.String()[mark:], "got ") {
			return fmt.Errorf("%s: no traffic", what)
		}
		return nil
	})
}

const faultOptions = "ZmqTimeout 5\n\t\tZmqRetries 2\n\t\tZmqHeartbeat 300ms 1200ms"

// workerFaults kills, restarts and pauses one of two workers under load.
func workerFaults(t *testing.T, url string, a, b *worker) {
	l := startLoad(t, url, 8)
	waitServed(t, a, 0, "worker a")
	waitServed(t, b, 0, "worker b")
	l.waitOK(t, "warm-up", 50, 20*time.Second)

	if n := l.errorsDuring(func() {
		a.signal(t, syscall.SIGKILL)
		time.Sleep(1500 * time.Millisecond)
		l.waitOK(t, "after kill -9", 50, 20*time.Second)
	}); n != 0 {
		t.Errorf("kill -9 of one worker: %d requests failed; GETs should have been retried on the other", n)
	}

	restarted := startPyWorkerAt(t, "a-again", a.Endpoint, "--log")
	waitServed(t, restarted, 0, "restarted worker")

	mark := len(b.Output.String())
	if n := l.errorsDuring(func() {
		b.signal(t, syscall.SIGSTOP)
		time.Sleep(2500 * time.Millisecond) // past the 1.2 s heartbeat timeout
		l.waitOK(t, "while one worker is paused", 50, 20*time.Second)
		b.signal(t, syscall.SIGCONT)
	}); n != 0 {
		t.Errorf("SIGSTOP of one worker: %d requests failed; they should have moved to the other", n)
	}
	waitServed(t, b, mark, "resumed worker")
	l.finish(t)
}

func TestFaultsThroughApache(t *testing.T) {
	a, b := startPyWorker(t, "a", "--log"), startPyWorker(t, "b", "--log")
	h := startHTTPD(t, httpdParams{MPM: "event", Extra: fmt.Sprintf("\t<Location /f>\n\t\tSetHandler zmq\n\t\tZmqBackend %s %s\n\t\t%s\n\t</Location>",
		a.Endpoint, b.Endpoint, faultOptions)})
	h.expect(`\[zmq:(warn|error|info)\] .*MODZMQ01(0[0-9]|1[0-9]|2[0-9])`)
	workerFaults(t, h.URL+"/f/x", a, b)
}

func TestFaultsThroughGateway(t *testing.T) {
	a, b := startPyWorker(t, "a", "--log"), startPyWorker(t, "b", "--log")
	g := startGatewayProc(t, "", fmt.Sprintf("  - prefix: /f/\n    backend: [%s, %s]\n    timeout: 5s\n    retries: 2\n    heartbeat: 300ms\n    heartbeat_timeout: 1200ms\n",
		a.Endpoint, b.Endpoint))
	workerFaults(t, g.URL+"/f/x", a, b)
}

// TestBrokerRestart: workers behind the broker; the broker is killed and
// started again on the same ports; the bridge reconnects by itself.
func TestBrokerRestart(t *testing.T) {
	requireBuilt(t, "zmq-gateway")
	front := fmt.Sprintf("tcp://127.0.0.1:%d", freePort(t))
	back := fmt.Sprintf("tcp://127.0.0.1:%d", freePort(t))
	startBroker := func() *worker {
		w := &worker{Output: &syncBuffer{}, Endpoint: front}
		w.cmd = exec.Command(buildPath("zmq-gateway"), "broker", "-frontend", front, "-backend", back, "-heartbeat", "300ms")
		w.cmd.Stderr = w.Output
		if err := w.cmd.Start(); err != nil {
			t.Fatal(err)
		}
		t.Cleanup(func() { w.cmd.Process.Kill(); w.cmd.Wait() })
		return w
	}
	broker := startBroker()
	requireBuilt(t, "brokerworker")
	py := startProcess(t, python, filepath.Join(root, "test/workers/testworker.py"), "--broker", back, "--name", "py", "--log")
	startProcess(t, buildPath("brokerworker"), "-connect", back, "-name", "go")
	h := startHTTPD(t, httpdParams{MPM: "event", Extra: fmt.Sprintf("\t<Location /b>\n\t\tSetHandler zmq\n\t\tZmqBackend %s\n\t\t%s\n\t</Location>",
		front, faultOptions)})
	h.expect(`\[zmq:(warn|error|info)\] .*MODZMQ01(0[0-9]|1[0-9]|2[0-9])`)
	l := startLoad(t, h.URL+"/b/x", 8)
	l.waitOK(t, "through the broker", 100, 20*time.Second)
	waitServed(t, py, 0, "the Python broker worker")

	broker.cmd.Process.Kill()
	broker.cmd.Wait()
	time.Sleep(time.Second)
	startBroker()
	l.waitOK(t, "after the broker restart", 100, 30*time.Second)
	if n := l.errorsDuring(func() { l.waitOK(t, "steady again", 200, 20*time.Second) }); n != 0 {
		t.Errorf("%d failures after service resumed", n)
	}
	l.finish(t)
}

// TestNetworkCut runs a worker in a network namespace of its own and cuts
// its link under load: errors arrive within the timeout, service returns
// when the link does.
func TestNetworkCut(t *testing.T) {
	if os.Getuid() != 0 {
		t.Skip("needs root for ip netns")
	}
	if _, err := exec.LookPath("ip"); err != nil {
		t.Skip("needs iproute2")
	}
	n := os.Getpid() % 200
	ns, host, peer := fmt.Sprintf("mzt%d", os.Getpid()), fmt.Sprintf("mzh%d", n), fmt.Sprintf("mzn%d", n)
	ipHost, ipPeer := fmt.Sprintf("10.231.%d.1", n), fmt.Sprintf("10.231.%d.2", n)
	run := func(args ...string) {
		t.Helper()
		if out, err := exec.Command("ip", args...).CombinedOutput(); err != nil {
			t.Fatalf("ip %v: %v %s", args, err, out)
		}
	}
	exec.Command("ip", "netns", "del", ns).Run()
	exec.Command("ip", "link", "del", host).Run()
	run("netns", "add", ns)
	t.Cleanup(func() { exec.Command("ip", "netns", "del", ns).Run(); exec.Command("ip", "link", "del", host).Run() })
	run("link", "add", host, "type", "veth", "peer", "name", peer)
	run("link", "set", peer, "netns", ns)
	run("addr", "add", ipHost+"/30", "dev", host)
	run("link", "set", host, "up")
	run("netns", "exec", ns, "ip", "addr", "add", ipPeer+"/30", "dev", peer)
	run("netns", "exec", ns, "ip", "link", "set", peer, "up")
	run("netns", "exec", ns, "ip", "link", "set", "lo", "up")

	ep := fmt.Sprintf("tcp://%s:5555", ipPeer)
	startProcess(t, "ip", "netns", "exec", ns, python, filepath.Join(root, "test/workers/testworker.py"), "--bind", ep, "--name", "far")
	h := startHTTPD(t, httpdParams{MPM: "event", Extra: fmt.Sprintf("\t<Location /n>\n\t\tSetHandler zmq\n\t\tZmqBackend %s\n\t\tZmqTimeout 3\n\t\tZmqHeartbeat 300ms 1200ms\n\t</Location>", ep)})
	h.expect(`\[zmq:(warn|error|info)\] .*MODZMQ01(0[0-9]|1[0-9]|2[0-9])`)
	l := startLoad(t, h.URL+"/n/x", 4)
	l.waitOK(t, "across the link", 50, 20*time.Second)

	run("link", "set", host, "down")
	before := l.errStatus.Load()
	checkFor(t, 15*time.Second, func() error {
		if l.errStatus.Load()-before < 8 {
			return fmt.Errorf("only %d error answers during the cut", l.errStatus.Load()-before)
		}
		return nil
	})
	run("link", "set", host, "up")
	l.waitOK(t, "after the link returned", 50, 30*time.Second)
	l.finish(t)
	for status := range l.statuses {
		if status != 503 && status != 504 {
			t.Errorf("status %d during the cut; want 503 or 504", status)
		}
	}
}
