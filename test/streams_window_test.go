package test

import (
	"bufio"
	"encoding/json"
	"fmt"
	"io"
	"net"
	"net/http"
	"strings"
	"sync"
	"testing"
	"time"
)

// A client that reads at a crawl while upload_sink.py pushes a download as
// fast as its credits allow: the bytes the front holds for the stream, as
// its status reports them (streams.buffered_bytes), never exceed the stream
// window, and the download arrives whole. Through zmq-gateway and Apache.
func TestACrawlingClientKeepsTheFrontWithinTheWindow(t *testing.T) {
	const window = 128 << 10 // two of upload_sink.py's 64 KiB parts
	const size = 24 << 20    // beyond what the kernel's socket buffers take
	t.Run("gateway", func(t *testing.T) {
		sink := startPyScript(t, "examples/python/upload_sink.py")
		admin := fmt.Sprintf("127.0.0.1:%d", freePort(t))
		g := startGatewayProc(t, "", fmt.Sprintf("  - prefix: /sink\n    backend: [%s]\n    stream_window: %d\n    stream_body: true\nadmin: %s\n",
			sink.Endpoint, window, admin))
		crawlWithinWindow(t, g.Addr, "http://"+admin+"/status?json", window, size, g.Stderr.String)
		if s := streamsOf(t, "http://"+admin+"/status?json", "/sink"); s.Buffered != 0 || s.Open != 0 {
			t.Errorf("after the download: %d streams open holding %d bytes; want none", s.Open, s.Buffered)
		}
		// A streamed body is counted from the client.
		if resp, body := do(t, "POST", g.URL+"/sink", "", strings.NewReader(strings.Repeat("u", 1000))); resp.StatusCode != 200 || !strings.Contains(string(body), `"bytes": 1000`) {
			t.Fatalf("a streamed body: %d %q", resp.StatusCode, body)
		}
		if s := streamsOf(t, "http://"+admin+"/status?json", "/sink"); s.BodyBytes != 1000 || s.BodyParts != 1 {
			t.Errorf("a streamed body of 1000 bytes in one part: status counts %d bytes in %d parts from the client", s.BodyBytes, s.BodyParts)
		}
	})
	t.Run("apache", func(t *testing.T) {
		sink := startPyScript(t, "examples/python/upload_sink.py")
		h := startHTTPD(t, httpdParams{MPM: "event", Extra: fmt.Sprintf(`	<Location /sink>
		SetHandler zmq
		ZmqBackend %s
		ZmqStreamWindow %d
		ZmqStreamBody on
	</Location>
	<Location /zmq-status>
		SetHandler zmq-status
	</Location>
`, sink.Endpoint, window)})
		crawlWithinWindow(t, strings.TrimPrefix(h.URL, "http://"), h.URL+"/zmq-status?json", window, size, h.errorLog)
		if resp, body := do(t, "POST", h.URL+"/sink", "", strings.NewReader(strings.Repeat("u", 1000))); resp.StatusCode != 200 || !strings.Contains(string(body), `"bytes": 1000`) {
			t.Fatalf("a streamed body: %d %q", resp.StatusCode, body)
		}
		checkFor(t, 10*time.Second, func() error { // children publish twice a second
			s := streamsOf(t, h.URL+"/zmq-status?json", "/sink")
			if s.Buffered != 0 || s.Open != 0 || s.BodyBytes != 1000 || s.BodyParts != 1 {
				return fmt.Errorf("zmq-status: %+v; want nothing open or buffered, 1000 bytes in 1 part from the client", s)
			}
			return nil
		})
	})
}

// streamCounters is the streams block of a route in a status page's JSON.
type streamCounters struct {
	Open      int64 `json:"open"`
	Buffered  int64 `json:"buffered_bytes"`
	BodyParts int64 `json:"body_parts"`
	BodyBytes int64 `json:"bytes_from_client"`
}

// streamsOf reads route's stream counters from a status page's JSON.
func streamsOf(t *testing.T, url, route string) streamCounters {
	t.Helper()
	s, err := readStreams(url, route)
	if err != nil {
		t.Fatal(err)
	}
	return s
}

func readStreams(url, route string) (streamCounters, error) {
	resp, err := http.Get(url)
	if err != nil {
		return streamCounters{}, err
	}
	defer resp.Body.Close()
	var page struct {
		Routes []struct {
			Route   string          `json:"route"`
			Streams *streamCounters `json:"streams"`
		} `json:"routes"`
	}
	if err := json.NewDecoder(resp.Body).Decode(&page); err != nil {
		return streamCounters{}, fmt.Errorf("%s: %v", url, err)
	}
	for _, r := range page.Routes {
		if strings.TrimSpace(r.Route) == route && r.Streams != nil {
			return *r.Streams, nil
		}
	}
	return streamCounters{}, fmt.Errorf("%s has no streams for route %s", url, route)
}

// crawlWithinWindow downloads size bytes of upload_sink.py's pattern from
// addr's /sink/crawl, 16 KiB a millisecond at most,
// while it polls the status page: the route's buffered bytes must stay
// within window, and rise above zero (the worker did push).
func crawlWithinWindow(t *testing.T, addr, statusURL string, window, size int64, diag func() string) {
	t.Helper()
	c, err := net.Dial("tcp", addr)
	if err != nil {
		t.Fatal(err)
	}
	defer c.Close()
	fmt.Fprintf(c, "GET /sink/crawl?bytes=%d HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n", size)

	var mu sync.Mutex
	var peak, samples int64
	var pollErr error
	stop := make(chan struct{})
	polled := make(chan struct{})
	go func() {
		defer close(polled)
		for {
			select {
			case <-stop:
				return
			case <-time.After(20 * time.Millisecond):
			}
			s, err := readStreams(statusURL, "/sink")
			mu.Lock()
			peak, samples = max(peak, s.Buffered), samples+1
			if err != nil && pollErr == nil {
				pollErr = err
			}
			mu.Unlock()
		}
	}()
	r := bufio.NewReaderSize(c, 16<<10)
	resp, err := http.ReadResponse(r, nil)
	if err != nil {
		t.Fatal(err)
	}
	got, buf := int64(0), make([]byte, 16<<10)
	want := &patternReader{n: size}
	wantBuf := make([]byte, 16<<10)
	for {
		n, err := resp.Body.Read(buf)
		if n > 0 {
			io.ReadFull(want, wantBuf[:n])
			if string(buf[:n]) != string(wantBuf[:n]) {
				t.Fatalf("the download differs from the pattern at byte %d or after", got)
			}
			got += int64(n)
		}
		if err == io.EOF {
			break
		}
		if err != nil {
			t.Fatalf("after %d bytes: %v\n%s", got, err, diag())
		}
		time.Sleep(time.Millisecond)
	}
	close(stop)
	<-polled
	if got != size {
		t.Fatalf("the crawling client got %d bytes, want %d", got, size)
	}
	mu.Lock()
	defer mu.Unlock()
	if pollErr != nil {
		t.Errorf("reading the status page during the download: %v", pollErr)
	}
	t.Logf("%d status samples, the most buffered %d bytes (window %d)", samples, peak, window)
	if peak > window {
		t.Errorf("the front held %d bytes for one stream, over its window of %d", peak, window)
	}
	if peak == 0 {
		t.Errorf("in %d status samples the front never held a byte of the stream: the gauge does not count", samples)
	}
}
