package bridge

import (
	"math"
	"testing"
	"time"
)

func TestStatsRecordAndQuantile(t *testing.T) {
	var s Stats
	for i := 0; i < 90; i++ {
		s.record(200, 700*time.Microsecond) // bucket (0.5 ms, 1 ms]
	}
	for i := 0; i < 10; i++ {
		s.record(504, 3*time.Second) // bucket (2.5 s, 5 s]
	}
	if s.Status[200].Load() != 90 || s.Status[504].Load() != 10 {
		t.Fatalf("status counts %d %d", s.Status[200].Load(), s.Status[504].Load())
	}
	buckets := make([]int64, len(s.Buckets))
	for i := range s.Buckets {
		buckets[i] = s.Buckets[i].Load()
	}
	for _, tt := range []struct{ q, lo, hi float64 }{{0.5, 0.0005, 0.001}, {0.9, 0.0005, 0.001}, {0.99, 2.5, 5}} {
		if got := Quantile(buckets, tt.q); got < tt.lo || got > tt.hi {
			t.Errorf("q%.2f = %v, want within [%v, %v]", tt.q, got, tt.lo, tt.hi)
		}
	}
	if !math.IsNaN(Quantile(make([]int64, len(buckets)), 0.5)) {
		t.Error("quantile of nothing should be NaN")
	}
	if got := time.Duration(s.SumNs.Load()); got != 90*700*time.Microsecond+30*time.Second {
		t.Errorf("sum %v", got)
	}
}
