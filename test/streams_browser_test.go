package test

import (
	"bufio"
	"bytes"
	"context"
	"fmt"
	"os"
	"os/exec"
	"path/filepath"
	"regexp"
	"strings"
	"syscall"
	"testing"
	"time"
)

// ssePage opens an EventSource on /clock, writes each event's data into
// #events, and closes it after 5 events (an EventSource reconnects when a
// stream ends); #state says "done" then. Every error event (a stream that
// broke or ended early) is added to #errors.
const ssePage = `<!doctype html>
<html><head><meta charset="utf-8"><title>mod_zmq SSE</title></head>
<body>
<pre id="events"></pre>
<pre id="errors"></pre>
<pre id="state">waiting</pre>
<script>
const got = [];
const es = new EventSource('/clock');
es.onmessage = (e) => {
	got.push(e.data);
	document.getElementById('events').textContent = got.join(' ');
	if (got.length === 5) {
		es.close();
		document.getElementById('state').textContent = 'done';
	}
};
es.onerror = () => {
	document.getElementById('errors').textContent += 'error after ' + got.length + ' events (readyState ' + es.readyState + ') ';
};
</script>
</body></html>
`

// writeSSEPage writes ssePage to page.html in a directory Apache's
// children (www-data when the tests run as root) can read, and returns
// the directory. The harness's t.TempDir() lies under a 0700 directory.
func writeSSEPage(t *testing.T) string {
	t.Helper()
	dir, err := os.MkdirTemp("", "modzmq-sse-page-")
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { os.RemoveAll(dir) })
	if err := os.Chmod(dir, 0o755); err != nil {
		t.Fatal(err)
	}
	if err := os.WriteFile(filepath.Join(dir, "page.html"), []byte(ssePage), 0o644); err != nil {
		t.Fatal(err)
	}
	return dir
}

// requireChromium returns Debian's chromium. test/deps.sh installs it, so
// a machine without it fails the test with the command to run, unless
// apt-get has no chromium to install, where the test is skipped.
func requireChromium(t *testing.T) string {
	t.Helper()
	if p, err := exec.LookPath("chromium"); err == nil {
		return p
	}
	const line = "sudo apt-get update && sudo apt-get install -y --no-install-recommends chromium"
	out, _ := exec.Command("apt-cache", "policy", "chromium").CombinedOutput()
	if m := regexp.MustCompile(`Candidate: (\S+)`).FindSubmatch(out); m == nil || string(m[1]) == "(none)" {
		t.Skipf("chromium is not installed and apt-get has none to install here (%s)", line)
	}
	t.Fatalf("chromium is missing: run ./test/deps.sh, or: %s", line)
	return ""
}

var (
	eventsElem = regexp.MustCompile(`<pre id="events">([^<]*)</pre>`)
	errorsElem = regexp.MustCompile(`<pre id="errors">([^<]*)</pre>`)
	stateElem  = regexp.MustCompile(`<pre id="state">([^<]*)</pre>`)
)

// browseSSEPage loads url (ssePage) in headless Chromium and returns what
// the page's EventSource received, its errors and its state. Chromium may reach
// 127.0.0.1 only: every other host name resolves to nothing, and its
// background services are off.
func browseSSEPage(t *testing.T, url string) (events, errors, state string) {
	t.Helper()
	bin := requireChromium(t)
	ctx, cancel := context.WithTimeout(context.Background(), 90*time.Second)
	defer cancel()
	cmd := exec.CommandContext(ctx, bin, "--headless", "--no-sandbox", "--disable-gpu",
		"--user-data-dir="+t.TempDir(), "--no-first-run", "--no-default-browser-check",
		"--disable-background-networking", "--disable-component-update", "--disable-sync",
		"--disable-extensions", "--disable-default-apps", "--no-proxy-server",
		"--host-resolver-rules=MAP * ~NOTFOUND, EXCLUDE 127.0.0.1",
		// Virtual time stands still while a request is in flight, so the
		// DOM is dumped after the stream, not after the page's load event.
		"--virtual-time-budget=10000", "--dump-dom", url)
	// Chromium's helper processes go with it when the deadline kills it.
	cmd.SysProcAttr = &syscall.SysProcAttr{Setpgid: true}
	cmd.Cancel = func() error { return syscall.Kill(-cmd.Process.Pid, syscall.SIGKILL) }
	cmd.WaitDelay = 10 * time.Second
	var stdout, stderr bytes.Buffer
	cmd.Stdout, cmd.Stderr = &stdout, &stderr
	start := time.Now()
	err := cmd.Run()
	t.Logf("chromium took %v", time.Since(start).Round(time.Millisecond))
	dom := stdout.String()
	e, x, s := eventsElem.FindStringSubmatch(dom), errorsElem.FindStringSubmatch(dom), stateElem.FindStringSubmatch(dom)
	if err != nil || e == nil || x == nil || s == nil {
		t.Fatalf("chromium --dump-dom %s: %v\nDOM:\n%s\nstderr (last 2000 bytes):\n%s", url, err, dom, tail(stderr.String(), 2000))
	}
	return e[1], x[1], s[1]
}

func tail(s string, n int) string {
	if len(s) > n {
		return s[len(s)-n:]
	}
	return s
}

// A browser's EventSource, in headless Chromium, takes the SSE stream of
// the pyzmq example through Apache (HTTP/1.1, the page a static file on the
// same origin) and through zmq-gateway in HTTP mode and in stream mode
// (the page from a worker): all 5 events, in order, and no error before
// the page closed the stream.
func TestSSEInChromium(t *testing.T) {
	requireChromium(t)
	dir := writeSSEPage(t)
	clock := startStreamClock(t, "--count", "5", "--interval", "0.05")
	const want = "0 1 2 3 4"

	t.Run("Apache", func(t *testing.T) {
		h := startHTTPD(t, httpdParams{MPM: "event",
			Global: "LoadModule alias_module /usr/lib/apache2/modules/mod_alias.so\n" +
				"LoadModule mime_module /usr/lib/apache2/modules/mod_mime.so\n" +
				"TypesConfig /dev/null\nAddType text/html .html\n",
			Extra: fmt.Sprintf(`	Alias /page %s/page.html
	<Directory %s>
		Require all granted
	</Directory>
	<Location /clock>
		SetHandler zmq
		ZmqBackend %s
	</Location>
`, dir, dir, clock.Endpoint)})
		events, errs, state := browseSSEPage(t, h.URL+"/page")
		if events != want || errs != "" || state != "done" {
			t.Errorf("the page's EventSource got %q, errors %q, state %q; want %q, none, done\naccess_log:\n%s",
				events, errs, state, want, readFile(filepath.Join(h.Dir, "access_log")))
		}
	})

	t.Run("Gateway", func(t *testing.T) {
		forEachGatewayMode(t, func(t *testing.T, mode string) {
			ep := startPyScript(t, "test/workers/sse_gate_worker.py", "--page", filepath.Join(dir, "page.html")).Endpoint
			g := startGatewayProc(t, mode, fmt.Sprintf("  - prefix: /page\n    backend: [%s]\n"+
				"  - prefix: /clock\n    backend: [%s]\n", ep, clock.Endpoint))
			events, errs, state := browseSSEPage(t, g.URL+"/page")
			if events != want || errs != "" || state != "done" {
				t.Errorf("the page's EventSource got %q, errors %q, state %q; want %q, none, done\nzmq-gateway (mode %q):\n%s",
					events, errs, state, want, mode, g.Stderr)
			}
		})
	})
}

func readFile(name string) string {
	b, _ := os.ReadFile(name)
	return string(b)
}

// startGateWorker runs test/workers/sse_gate_worker.py: a stream whose
// every event after the first waits for a release (a request to .../next).
func startGateWorker(t *testing.T) *worker {
	t.Helper()
	return startPyScript(t, "test/workers/sse_gate_worker.py", "--count", "5")
}

// readGatedEvents runs curl (args, then -sSN) on the gate worker's
// .../events URL and reads the stream event by event: it releases event
// i+1 (a GET of release) only once it has read event i, so a front or
// filter that holds an event back until more follow never gets the next
// one, and the test fails naming the event. It checks that all 5 arrive in
// order, that the stream ends cleanly (curl exits 0), and returns the
// response's head as curl printed it.
func readGatedEvents(t *testing.T, release string, args ...string) string {
	t.Helper()
	headFile := filepath.Join(t.TempDir(), "head")
	cmd := exec.Command("curl", append([]string{"-sSN", "--max-time", "120", "-D", headFile}, args...)...)
	stdout, err := cmd.StdoutPipe()
	if err != nil {
		t.Fatal(err)
	}
	var stderr bytes.Buffer
	cmd.Stderr = &stderr
	if err := cmd.Start(); err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { cmd.Process.Kill() })
	events := make(chan string, 16)
	go func() {
		defer close(events)
		rd := bufio.NewReader(stdout)
		var ev strings.Builder
		for {
			line, err := rd.ReadString('\n')
			if err != nil {
				if ev.Len() > 0 || line != "" {
					events <- "unterminated: " + ev.String() + line
				}
				return
			}
			if line == "\n" {
				events <- ev.String()
				ev.Reset()
				continue
			}
			ev.WriteString(line)
		}
	}()
	// A liveness bound, not a timing: the worker sends nothing more until
	// released, so an event held back never arrives.
	const bound = 30 * time.Second
	for i := 0; i < 5; i++ {
		select {
		case ev, ok := <-events:
			if !ok {
				cmd.Wait()
				t.Fatalf("the stream ended after %d events: curl %s\nhead:\n%s", i, stderr.String(), readFile(headFile))
			}
			if want := fmt.Sprintf("data: %d\n", i); ev != want {
				t.Fatalf("event %d: got %q, want %q", i, ev, want)
			}
		case <-time.After(bound):
			t.Fatalf("event %d did not reach the client within %v although the worker had sent it (held back until more data follows?)\nhead:\n%s",
				i, bound, readFile(headFile))
		}
		if i < 4 {
			resp, body := do(t, "GET", release, "", nil)
			if want := fmt.Sprintf("sent %d", i+1); resp.StatusCode != 200 || string(body) != want {
				t.Fatalf("release of event %d: %d %q, want 200 %q", i+1, resp.StatusCode, body, want)
			}
		}
	}
	select {
	case ev, ok := <-events:
		if ok {
			t.Fatalf("more after the last event: %q", ev)
		}
	case <-time.After(bound):
		t.Fatalf("the stream did not end within %v of its last event", bound)
	}
	if err := cmd.Wait(); err != nil {
		t.Fatalf("curl: %v %s", err, stderr.String())
	}
	return readFile(headFile)
}

// Streams through mod_deflate (AddOutputFilterByType DEFLATE
// text/event-stream): the response is gzip-compressed, yet every event
// reaches curl --compressed on its own, decompressed and in order, as the
// worker sends it: compression does not hold an event back until more
// follow.
func TestSSEThroughDeflate(t *testing.T) {
	gate := startGateWorker(t)
	h := startHTTPD(t, httpdParams{MPM: "event",
		Global: "LoadModule filter_module /usr/lib/apache2/modules/mod_filter.so\n" +
			"LoadModule deflate_module /usr/lib/apache2/modules/mod_deflate.so\n",
		Extra: fmt.Sprintf(`	<Location /gate>
		SetHandler zmq
		ZmqBackend %s
		AddOutputFilterByType DEFLATE text/event-stream
	</Location>
`, gate.Endpoint)})
	head := readGatedEvents(t, h.URL+"/gate/next", "--compressed", h.URL+"/gate/events")
	lower := strings.ToLower(head)
	if !strings.HasPrefix(head, "HTTP/1.1 200") || !strings.Contains(lower, "content-encoding: gzip") ||
		!strings.Contains(lower, "content-type: text/event-stream") {
		t.Errorf("the head shows no gzip-compressed event stream:\n%s", head)
	}
}

// selfSignedCert makes a certificate and key for localhost and 127.0.0.1
// with openssl, and returns their files.
func selfSignedCert(t *testing.T) (cert, key string) {
	t.Helper()
	dir := t.TempDir()
	cert, key = filepath.Join(dir, "cert.pem"), filepath.Join(dir, "key.pem")
	out, err := exec.Command("openssl", "req", "-x509", "-newkey", "ec", "-pkeyopt", "ec_paramgen_curve:prime256v1",
		"-nodes", "-days", "2", "-subj", "/CN=localhost", "-keyout", key, "-out", cert,
		"-addext", "subjectAltName=DNS:localhost,IP:127.0.0.1",
		"-addext", "basicConstraints=critical,CA:FALSE").CombinedOutput()
	if err != nil {
		t.Fatalf("openssl: %v\n%s", err, out)
	}
	return cert, key
}

// startTLSHTTPD starts httpd as startHTTPD does, with p.Global set to a
// TLS virtual host on 127.0.0.1:tlsPort (mod_ssl, a self-signed
// certificate for localhost and 127.0.0.1) that speaks HTTP/2 and HTTP/1.1
// (ALPN) and takes WebSockets over HTTP/2 (H2WebSockets): global goes
// before it, vhost inside it. It returns httpd and the certificate's file,
// for clients to trust.
func startTLSHTTPD(t *testing.T, p httpdParams, tlsPort int, global, vhost string) (*httpd, string) {
	t.Helper()
	cert, key := selfSignedCert(t)
	mods := "/usr/lib/apache2/modules"
	p.Global = fmt.Sprintf(`LoadModule socache_shmcb_module %[1]s/mod_socache_shmcb.so
LoadModule ssl_module %[1]s/mod_ssl.so
LoadModule http2_module %[1]s/mod_http2.so
%[5]sSSLSessionCache shmcb:ssl_scache(512000)
Listen 127.0.0.1:%[2]d
<VirtualHost 127.0.0.1:%[2]d>
	ServerName localhost
	SSLEngine on
	SSLCertificateFile %[3]s
	SSLCertificateKeyFile %[4]s
	Protocols h2 http/1.1
	H2WebSockets on
%[6]s</VirtualHost>
`, mods, tlsPort, cert, key, global, vhost)
	h := startHTTPD(t, p)
	// Debian's mod_ssl warns when it was built against a newer OpenSSL
	// than the libssl3 installed: a mismatch of the machine's packages.
	h.expect(`AH01882: Init: this version of mod_ssl was compiled against a newer library`)
	return h, cert
}

// Streams through mod_ssl: a TLS virtual host (self-signed certificate)
// that speaks HTTP/1.1 and HTTP/2 (Protocols h2 http/1.1, ALPN). Over both,
// every event reaches curl on its own and in order, and the stream ends
// cleanly; curl --http2 gets an HTTP/2 response.
func TestSSEOverTLS(t *testing.T) {
	gate := startGateWorker(t)
	tlsPort := freePort(t)
	location := fmt.Sprintf(`	<Location /gate>
		SetHandler zmq
		ZmqBackend %s
	</Location>
`, gate.Endpoint)
	h, _ := startTLSHTTPD(t, httpdParams{MPM: "event", Extra: location}, tlsPort, "", location)
	events := fmt.Sprintf("https://127.0.0.1:%d/gate/events", tlsPort)

	t.Run("HTTP1.1", func(t *testing.T) {
		head := readGatedEvents(t, h.URL+"/gate/next", "-k", "--http1.1", events)
		lower := strings.ToLower(head)
		if !strings.HasPrefix(head, "HTTP/1.1 200") || !strings.Contains(lower, "content-type: text/event-stream") ||
			!strings.Contains(lower, "transfer-encoding: chunked") {
			t.Errorf("head over TLS:\n%s", head)
		}
	})
	t.Run("HTTP2", func(t *testing.T) {
		head := readGatedEvents(t, h.URL+"/gate/next", "-k", "--http2", events)
		if !strings.HasPrefix(head, "HTTP/2 200") || !strings.Contains(head, "content-type: text/event-stream") {
			t.Errorf("head over TLS with --http2 (want HTTP/2):\n%s", head)
		}
	})
}
