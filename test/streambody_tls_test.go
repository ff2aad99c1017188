package test

import (
	"crypto/rand"
	"crypto/sha256"
	"crypto/tls"
	"encoding/hex"
	"encoding/json"
	"fmt"
	"io"
	"net/http"
	"strings"
	"testing"
	"time"
)

// A streamed request body through mod_ssl: the body loop reads the client
// without waiting over HTTP/1.1 (through mod_ssl's filter, where a record
// may hold more than one read takes) and waits for the client under HTTP/2.
// Over both, upload_sink.py gets every byte (its SHA-256 matches), and an
// answer given before the body is complete (early_answer_worker.py's 413)
// reaches the client.
func TestStreamedBodyOverTLS(t *testing.T) {
	sink := startPyScript(t, "examples/python/upload_sink.py")
	early := startEarlyWorker(t)
	tlsPort := freePort(t)
	locations := fmt.Sprintf(`	<Location /up>
		SetHandler zmq
		ZmqBackend %s
		ZmqStreamBody on
		ZmqMaxBody 0
	</Location>
	<Location /early>
		SetHandler zmq
		ZmqBackend %s
		ZmqStreamBody on
		ZmqMaxBody 0
	</Location>
`, sink.Endpoint, early.Endpoint)
	startTLSHTTPD(t, httpdParams{MPM: "event", Extra: locations}, tlsPort, "", locations)
	base := fmt.Sprintf("https://127.0.0.1:%d", tlsPort)

	body := make([]byte, 8<<20)
	rand.Read(body)
	sum := sha256.Sum256(body)
	for _, h2 := range []bool{false, true} {
		name := map[bool]string{false: "HTTP1.1", true: "HTTP2"}[h2]
		t.Run(name, func(t *testing.T) {
			tr := &http.Transport{TLSClientConfig: &tls.Config{InsecureSkipVerify: true}, ForceAttemptHTTP2: h2}
			if !h2 {
				tr.TLSNextProto = map[string]func(string, *tls.Conn) http.RoundTripper{} // HTTP/1.1 only
			}
			defer tr.CloseIdleConnections()
			c := &http.Client{Transport: tr, Timeout: 60 * time.Second}

			resp, err := c.Post(base+"/up/file", "application/octet-stream", strings.NewReader(string(body)))
			if err != nil {
				t.Fatal(err)
			}
			got, _ := io.ReadAll(resp.Body)
			resp.Body.Close()
			if want := map[bool]int{false: 1, true: 2}[h2]; resp.ProtoMajor != want {
				t.Errorf("the upload went over HTTP/%d, want HTTP/%d", resp.ProtoMajor, want)
			}
			var r struct {
				Bytes  int64  `json:"bytes"`
				SHA256 string `json:"sha256"`
			}
			if resp.StatusCode != 200 || json.Unmarshal(got, &r) != nil || r.Bytes != int64(len(body)) ||
				r.SHA256 != hex.EncodeToString(sum[:]) {
				t.Errorf("upload of %d bytes over TLS: %d %s; want 200 with %d bytes and SHA-256 %x",
					len(body), resp.StatusCode, got, len(body), sum)
			}

			// The worker answers 413 after the first part: the client, still
			// sending, gets it.
			resp, err = c.Post(base+"/early/whole", "application/octet-stream", strings.NewReader(string(body)))
			if err != nil {
				t.Fatalf("early answer over TLS: %v", err)
			}
			got, _ = io.ReadAll(resp.Body)
			resp.Body.Close()
			if resp.StatusCode != 413 || !strings.Contains(string(got), "no thanks") {
				t.Errorf("early answer over TLS: %d %q, want 413 \"no thanks\"", resp.StatusCode, got)
			}
		})
	}
}
