package gateway

import (
	"bytes"
	"io"
	"math"
	"net/http"
	"net/http/httptest"
	"runtime"
	"testing"
)

// chunkReader hands out its bytes at most step at a time, then fails with
// err (io.EOF for an honest body) — as a client's body arrives.
type chunkReader struct {
	data []byte
	step int
	err  error
}

func (c *chunkReader) Read(p []byte) (int, error) {
	if len(c.data) == 0 {
		return 0, c.err
	}
	n := copy(p[:min(len(p), c.step)], c.data)
	c.data = c.data[n:]
	return n, nil
}

func (c *chunkReader) Close() error { return nil }

func bodyRequest(length int64, body *chunkReader) *http.Request {
	r := httptest.NewRequest("POST", "/x", nil)
	r.ContentLength = length
	r.Body = body
	return r
}

// allocated reports the bytes fn allocated on the heap.
// The counts are the process's: other goroutines (a test's servers still
// closing) may allocate meanwhile, so the least of three runs is taken.
func allocated(fn func()) uint64 {
	least := uint64(math.MaxUint64)
	for range 3 {
		var before, after runtime.MemStats
		runtime.GC()
		runtime.ReadMemStats(&before)
		fn()
		runtime.ReadMemStats(&after)
		least = min(least, after.TotalAlloc-before.TotalAlloc)
	}
	return least
}

// TestReadBodyClaimSizesNoBuffer: a Content-Length the client does not back
// with bytes costs at most the first 64 KiB buffer, with or without max_body.
func TestReadBodyClaimSizesNoBuffer(t *testing.T) {
	for _, tt := range []struct {
		name          string
		length, limit int64
	}{
		{"1 GiB claimed, no limit", 1 << 30, 0},
		{"1 TB claimed, no limit", 1_000_000_000_000, 0},
		{"8 MiB claimed under an 8 MiB limit", 8 << 20, 8 << 20},
	} {
		t.Run(tt.name, func(t *testing.T) {
			var status int
			n := allocated(func() {
				r := bodyRequest(tt.length, &chunkReader{data: []byte("only these bytes"), step: 5, err: io.ErrUnexpectedEOF})
				_, status = readBody(httptest.NewRecorder(), r, tt.limit)
			})
			if status != http.StatusBadRequest {
				t.Errorf("body cut short: status %d, want 400", status)
			}
			if n > 1<<20 {
				t.Errorf("%d bytes allocated for a body of 16 bytes claiming %d; want under 1 MiB", n, tt.length)
			}
		})
	}
}

// TestReadBodyHonestLengthOneBuffer: an honest body arrives whole in one
// buffer no larger than its length plus one; up to 64 KiB with no regrowth.
func TestReadBodyHonestLengthOneBuffer(t *testing.T) {
	for _, size := range []int{1, 100, 64 << 10, 64<<10 + 1, 200_001, 3<<20 + 17} {
		body := make([]byte, size)
		for i := range body {
			body[i] = byte(i % 251)
		}
		var got []byte
		var status int
		n := allocated(func() {
			got, status = readBody(httptest.NewRecorder(), bodyRequest(int64(size), &chunkReader{data: body, step: 16 << 10, err: io.EOF}), 0)
		})
		if status != 0 || !bytes.Equal(got, body) {
			t.Errorf("%d bytes: status %d, %d bytes read, equal %v", size, status, len(got), bytes.Equal(got, body))
			continue
		}
		if cap(got) > size+1 {
			t.Errorf("%d bytes: buffer of %d, want at most the length plus one", size, cap(got))
		}
		if size <= 64<<10 {
			// The request and reader are two of them; the least of three
			// tries, as in allocated.
			allocs, base := math.Inf(1), math.Inf(1)
			for range 3 {
				allocs = min(allocs, testing.AllocsPerRun(5, func() {
					readBody(nil, bodyRequest(int64(size), &chunkReader{data: body, step: 16 << 10, err: io.EOF}), 0)
				}))
				base = min(base, testing.AllocsPerRun(5, func() {
					bodyRequest(int64(size), &chunkReader{data: body, step: 16 << 10, err: io.EOF})
				}))
			}
			if extra := allocs - base; extra != 1 {
				t.Errorf("%d bytes: %v allocations for the body, want one buffer", size, allocs-base)
			}
		}
		// Doubling from 64 KiB: everything allocated stays within three times the body.
		if limit := uint64(3*size + 64<<10 + 64<<10); n > limit {
			t.Errorf("%d bytes: %d bytes allocated reading it, want at most %d", size, n, limit)
		}
	}
	// A chunked body (no length) is read whole too.
	body := bytes.Repeat([]byte("chunked "), 40_000)
	got, status := readBody(httptest.NewRecorder(), bodyRequest(-1, &chunkReader{data: body, step: 1000, err: io.EOF}), 0)
	if status != 0 || !bytes.Equal(got, body) {
		t.Errorf("chunked: status %d, %d bytes, equal %v", status, len(got), bytes.Equal(got, body))
	}
}
