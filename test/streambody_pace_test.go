package test

import (
	"bufio"
	"crypto/sha256"
	"encoding/hex"
	"encoding/json"
	"fmt"
	"io"
	"net"
	"net/http"
	"strings"
	"testing"
	"time"
)

// With stream_body, timeouts.read bounds each silence of the client, not
// the whole body: through zmq-gateway in both modes, with a read timeout
// of 1 s, a body sent in pieces 300 ms apart over about 3 s reaches
// upload_sink.py whole (its SHA-256 matches), and a body whose client
// sends half and then nothing gets 408 while the client still waits.
// (Before, the HTTP mode answered both after 1 s, net/http's deadline for
// the whole request, with an empty 200: the failed read ended the
// request's context, and the handler took it for a client that had left.
// Stream mode cut the first with 408.)
func TestStreamedBodyTimeoutIsPerSilence(t *testing.T) {
	forEachGatewayMode(t, func(t *testing.T, mode string) {
		sink := startPyScript(t, "examples/python/upload_sink.py")
		g := startGatewayProcTimeouts(t, mode, "  read: 1s\n",
			fmt.Sprintf("  - prefix: /up\n    backend: [%s]\n    stream_body: true\n    max_body: 0\n", sink.Endpoint))

		const pieces, piece = 10, 32 << 10
		body := make([]byte, pieces*piece)
		for i := range body {
			body[i] = byte(i % 251)
		}
		sum := sha256.Sum256(body)

		t.Run("Slow", func(t *testing.T) {
			conn, resp := postInPieces(t, g.Addr, body, piece, 300*time.Millisecond, -1)
			defer conn.Close()
			got, _ := io.ReadAll(resp.Body)
			var r struct {
				Bytes  int    `json:"bytes"`
				SHA256 string `json:"sha256"`
			}
			if resp.StatusCode != 200 || json.Unmarshal(got, &r) != nil || r.Bytes != len(body) || r.SHA256 != hex.EncodeToString(sum[:]) {
				t.Errorf("a body sent in %d pieces %v apart: %s %s, want 200 with %d bytes", pieces, 300*time.Millisecond, resp.Status, got, len(body))
			}
		})
		t.Run("Silent", func(t *testing.T) {
			conn, resp := postInPieces(t, g.Addr, body, piece, 0, pieces/2)
			defer conn.Close()
			got, _ := io.ReadAll(resp.Body)
			if resp.StatusCode != http.StatusRequestTimeout {
				t.Errorf("a client silent after half its body: %s %s, want 408", resp.Status, got)
			}
		})
	})
}

// postInPieces POSTs body to /up on addr over a connection of its own, in
// pieces of piece bytes, gap apart; with stop >= 0 it sends only the first
// stop pieces and then waits. It returns the answer, read while the
// client sends (or waits).
func postInPieces(t *testing.T, addr string, body []byte, piece int, gap time.Duration, stop int) (net.Conn, *http.Response) {
	t.Helper()
	conn, err := net.Dial("tcp", addr)
	if err != nil {
		t.Fatal(err)
	}
	conn.SetDeadline(time.Now().Add(30 * time.Second)) // a liveness bound
	head := fmt.Sprintf("POST /up HTTP/1.1\r\nHost: x\r\nContent-Type: application/octet-stream\r\nContent-Length: %d\r\n\r\n", len(body))
	if _, err := conn.Write([]byte(head)); err != nil {
		t.Fatal(err)
	}
	go func() {
		for i := 0; i*piece < len(body) && (stop < 0 || i < stop); i++ {
			if i > 0 {
				time.Sleep(gap)
			}
			if _, err := conn.Write(body[i*piece : min((i+1)*piece, len(body))]); err != nil {
				return
			}
		}
	}()
	resp, err := http.ReadResponse(bufio.NewReader(conn), nil)
	if err != nil {
		conn.Close()
		t.Fatalf("the answer: %v", err)
	}
	if !strings.HasPrefix(resp.Proto, "HTTP/1.") {
		t.Errorf("the answer's protocol: %s", resp.Proto)
	}
	return conn, resp
}
