package test

import (
	"fmt"
	"testing"
	"time"
)

// A 1 GiB upload and a 1 GiB download through zmq-gateway's stream mode
// (stream_body: true), with the pyzmq example upload_sink.py: SHA-256
// matches both ways, the worker sees the upload's first part before the
// upload ends, and stream mode's peak resident size grows by less than
// 64 MiB, however fast the client sends.
func TestLargeTransfersThroughStreamMode(t *testing.T) {
	sink := startPyScript(t, "examples/python/upload_sink.py")
	g := startGatewayProc(t, "stream", fmt.Sprintf("  - prefix: /up\n    backend: [%s]\n    stream_body: true\n    max_body: 0\n    timeout: 5s\n", sink.Endpoint))
	pid := g.cmd.Process.Pid
	before := vmHWM(t, pid)
	const size = 1 << 30
	start := time.Now()
	uploadToSink(t, g.URL+"/up", size, sink, 1, func() string { return "zmq-gateway stream: " + g.Stderr.String() })
	up := time.Since(start)
	downloadFromSink(t, g.URL+"/up/blob", size)
	grew := vmHWM(t, pid) - before
	if grew > 64<<10 {
		t.Errorf("zmq-gateway stream's peak resident size grew by %d KiB moving 2 x 1 GiB; want under 64 MiB", grew)
	}
	t.Logf("1 GiB up in %v, down in %v; zmq-gateway stream's peak resident size grew by %d KiB",
		up.Round(time.Millisecond), (time.Since(start) - up).Round(time.Millisecond), grew)
}
