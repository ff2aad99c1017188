package bridge

import (
	"math"
	"sync/atomic"
	"time"
)

// LatencyBuckets are the upper bounds, in seconds, of the latency histogram
// every client keeps (the last bucket is +Inf).
var LatencyBuckets = []float64{0.0005, 0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10, 30, 60}

// Stats are a client's request counters: outcomes by HTTP status (a worker's
// status, or the one its error maps to) and a latency histogram. Safe for
// concurrent use; the zero value is ready.
type Stats struct {
	Status  [600]atomic.Int64                    // by status code
	Buckets [len(latencyBounds) + 1]atomic.Int64 // latency histogram; last is +Inf
	SumNs   atomic.Int64                         // total latency
}

// StreamStats count a client's streamed replies (see Stream). Safe for
// concurrent use; the zero value is ready.
type StreamStats struct {
	Open    atomic.Int64 // streams open now
	Parts   atomic.Int64 // parts with data handed to callers
	Bytes   atomic.Int64 // their bytes: worker to client
	Cancels atomic.Int64 // cancel notices sent, for streams and plain requests
	// Buffered is a gauge: what the workers of open streams sent that is not
	// yet granted back to them (parts the front holds or has just passed on),
	// each part costing its bytes plus PartCost. Credits keep it within the
	// window for every stream, however slowly its client reads.
	Buffered  atomic.Int64
	BodyParts atomic.Int64 // parts of streamed request bodies sent to workers
	BodyBytes atomic.Int64 // their bytes: client to worker
	// Ends counts ended streams by cause (StreamEnd).
	Ends [streamEndCauses]atomic.Int64
}

// StreamEnd is why a stream ended.
type StreamEnd int

const (
	EndNormal     StreamEnd = iota // the worker's @end
	EndClientGone                  // the caller went away first
	EndAborted                     // the worker's @abort
	EndIdle                        // no part for the idle timeout
	EndBroken                      // a part that broke the rules, a lost worker or connection
	streamEndCauses
)

var streamEndNames = [streamEndCauses]string{"end", "client_gone", "aborted", "idle", "broken"}

func (e StreamEnd) String() string { return streamEndNames[e] }

var latencyBounds = [16]float64{}

func init() { copy(latencyBounds[:], LatencyBuckets) }

func (s *Stats) record(status int, d time.Duration) {
	if status > 0 && status < len(s.Status) {
		s.Status[status].Add(1)
	}
	sec := d.Seconds()
	i := 0
	for i < len(latencyBounds) && sec > latencyBounds[i] {
		i++
	}
	s.Buckets[i].Add(1)
	s.SumNs.Add(int64(d))
}

// Quantile estimates the q-quantile (0..1) of latency in seconds from
// bucket counts, interpolating within the bucket; NaN when empty.
func Quantile(buckets []int64, q float64) float64 {
	total := int64(0)
	for _, n := range buckets {
		total += n
	}
	if total == 0 {
		return math.NaN()
	}
	rank := q * float64(total)
	seen := 0.0
	for i, n := range buckets {
		if seen+float64(n) >= rank && n > 0 {
			lo := 0.0
			if i > 0 {
				lo = LatencyBuckets[i-1]
			}
			if i >= len(LatencyBuckets) {
				return lo
			}
			return lo + (LatencyBuckets[i]-lo)*(rank-seen)/float64(n)
		}
		seen += float64(n)
	}
	return LatencyBuckets[len(LatencyBuckets)-1]
}
