package relay

/*
#include "modzmq.h"
#include "fast.h"
*/
import "C"

import (
	"bytes"
	"fmt"
	"os"
	"strconv"
	"strings"
	"sync"
	"sync/atomic"
	"syscall"
	"time"
	"unsafe"

	"github.com/modzmq/modzmq/bridge"
	"github.com/modzmq/modzmq/internal/status"
)

const (
	statsHeader   = C.MODZMQ_STATS_HEADER
	statsBackend  = C.MODZMQ_STATS_BACKEND
	offCodes      = C.MODZMQ_STATS_OFF_CODES
	offBuckets    = C.MODZMQ_STATS_OFF_BUCKETS
	offSumNs      = C.MODZMQ_STATS_OFF_SUM_NS
	offRetries    = C.MODZMQ_STATS_OFF_RETRIES
	offOverloads  = C.MODZMQ_STATS_OFF_OVERLOADS
	offInFlight   = C.MODZMQ_STATS_OFF_INFLIGHT
	offGoEntries  = C.MODZMQ_STATS_OFF_GO_ENTRIES
	offGoWaits    = C.MODZMQ_STATS_OFF_GO_WAITS
	offEndpoints  = C.MODZMQ_STATS_OFF_EP
	offStreams    = C.MODZMQ_STATS_OFF_STREAMS
	epFields      = C.MODZMQ_STATS_EP_FIELDS
	maxEndpoints  = C.MODZMQ_STATS_ENDPOINTS
	statusBuckets = C.MODZMQ_STATS_BUCKETS
)

// modzmq.h's statistics layout is package bridge's: a build where they
// differ does not compile.
var (
	_ [statusBuckets - len(bridge.Stats{}.Buckets)]struct{}
	_ [len(bridge.Stats{}.Buckets) - statusBuckets]struct{}
	_ [C.MODZMQ_STATS_CODES - len(bridge.Stats{}.Status)]struct{}
	_ [len(bridge.Stats{}.Status) - C.MODZMQ_STATS_CODES]struct{}
	_ [C.MODZMQ_STATS_STREAM_FIELDS - C.MODZMQ_ST_ENDS - len(bridge.StreamStats{}.Ends)]struct{}
	_ [C.MODZMQ_ST_ENDS + len(bridge.StreamStats{}.Ends) - C.MODZMQ_STATS_STREAM_FIELDS]struct{}
)

var statsSlot atomic.Pointer[[]int64]

// AttachStats makes publish write this process's counters into slot (a
// statistics slot, modzmq.h) twice a second from now on, and once more at
// exit (FlushStats).
func AttachStats(slot, watchers []int64) {
	if len(slot) < statsHeader+statsBackend {
		return
	}
	statsSlot.Store(&slot)
	go func() {
		defer func() { recover() }()
		watch(watchers)
		for range time.Tick(500 * time.Millisecond) {
			watch(watchers)
			publish()
		}
	}()
}

// watch claims, in watchers (one word per backend, shared by the
// children), every backend no live child watches, and makes its first
// client at once: its watch connections report the endpoints' state from
// this child's start, before any request. The other children make their
// clients on first use, so a backend costs one watch connection at start
// whatever the number of children; when the watching child exits, another
// claims the backend within half a second.
func watch(watchers []int64) {
	list := backends.Load()
	if list == nil {
		return
	}
	me := int64(os.Getpid())
	for i, b := range *list {
		if i >= len(watchers) {
			return
		}
		owner := atomic.LoadInt64(&watchers[i])
		if owner == me || (owner != 0 && alive(owner)) || !atomic.CompareAndSwapInt64(&watchers[i], owner, me) {
			continue
		}
		if c := firstClient(b); c != nil {
			c.start()
		}
	}
}

// alive reports whether process pid exists.
func alive(pid int64) bool {
	err := syscall.Kill(int(pid), 0)
	return err == nil || err == syscall.EPERM
}

// firstClient is the client of b with the lowest handle, or nil.
func firstClient(b *backend) *client {
	for h := 1; h <= C.MODZMQ_MAX_CLIENTS; h++ {
		if c := clients[h].Load(); c != nil && c.b == b && c.err == nil {
			return c
		}
	}
	return nil
}

// BlockWords is the length of one backend's block of a slot.
const BlockWords = statsBackend

// StatsWords is the length of a slot with nbackends backend blocks.
func StatsWords(nbackends int) int { return statsHeader + nbackends*statsBackend }

// publishSums is publish's scratch block, under publishMu (the ticker and
// FlushStats publish): with the C fast path, Apache children allocate almost
// nothing in Go, and a block per backend twice a second would be most of
// their garbage.
var (
	publishMu   sync.Mutex
	publishSums [statsBackend]int64
)

// FlushStats publishes at once: the child is exiting, and what it counted
// since the last tick would otherwise be lost.
func FlushStats() { publish() }

// publish writes every backend's counters (summed over its clients) into
// this process's slot. Only this process writes its slot, except the
// overload field, which the shim adds to and publish leaves alone.
func publish() {
	sp := statsSlot.Load()
	list := backends.Load()
	if sp == nil || list == nil {
		return
	}
	slot := *sp
	publishMu.Lock()
	defer publishMu.Unlock()
	for i, b := range *list {
		start := statsHeader + i*statsBackend
		if start+statsBackend > len(slot) {
			return
		}
		block := slot[start : start+statsBackend]
		sums := &publishSums
		*sums = [statsBackend]int64{}
		sums[offGoEntries] = b.goEntries.Load()
		sums[offGoWaits] = b.goWaits.Load()
		if list := b.clients.Load(); list != nil {
			for _, c := range *list {
				if c.Client == nil {
					continue
				}
				if c.fast != nil {
					C.modzmq_fast_add_stats(c.fast, (*C.int64_t)(unsafe.Pointer(&sums[0])))
				}
				st := c.Stats()
				for code := range st.Status {
					sums[offCodes+code] += st.Status[code].Load()
				}
				for k := range st.Buckets {
					sums[offBuckets+k] += st.Buckets[k].Load()
				}
				sums[offSumNs] += st.SumNs.Load()
				inFlight, _, retries := c.Counters()
				sums[offRetries] += retries
				sums[offInFlight] += inFlight
				ss, sf := c.StreamStats(), sums[offStreams:]
				sf[C.MODZMQ_ST_OPEN] += ss.Open.Load()
				sf[C.MODZMQ_ST_PARTS] += ss.Parts.Load()
				sf[C.MODZMQ_ST_BYTES] += ss.Bytes.Load()
				sf[C.MODZMQ_ST_CANCELS] += ss.Cancels.Load()
				sf[C.MODZMQ_ST_BUFFERED] += ss.Buffered.Load()
				sf[C.MODZMQ_ST_BODY_PARTS] += ss.BodyParts.Load()
				sf[C.MODZMQ_ST_BODY_BYTES] += ss.BodyBytes.Load()
				for k := range ss.Ends {
					sf[C.MODZMQ_ST_ENDS+k] += ss.Ends[k].Load()
				}
				for e, es := range c.Status() {
					if e >= maxEndpoints {
						break
					}
					f := sums[offEndpoints+e*epFields:]
					s := es.Stats
					f[C.MODZMQ_EP_REQUESTS] += s.Requests.Load()
					f[C.MODZMQ_EP_REPLIES] += s.Replies.Load()
					f[C.MODZMQ_EP_TIMEOUTS] += s.Timeouts.Load()
					f[C.MODZMQ_EP_NOWORKER] += s.NoWorker.Load()
					f[C.MODZMQ_EP_LOST] += s.Lost.Load()
					f[C.MODZMQ_EP_BADREPLIES] += s.BadReplies.Load()
					f[C.MODZMQ_EP_INFLIGHT] += s.InFlight.Load()
					f[C.MODZMQ_EP_CONNECTED] += s.Connected.Load()
					f[C.MODZMQ_EP_DISCONNECTED] += s.Disconnected.Load()
					f[C.MODZMQ_EP_RETRIED] += s.ConnectRetried.Load()
					f[C.MODZMQ_EP_HSFAILED] += s.HandshakeFailed.Load()
					if es.State == bridge.StateUp {
						f[C.MODZMQ_EP_UP] = 1
					}
				}
			}
		}
		for j := range sums {
			if j != offOverloads {
				atomic.StoreInt64(&block[j], sums[j])
			}
		}
	}
}

// RenderStatus renders summed backend blocks (modzmq_status_render) as
// format, a MODZMQ_STATUS_* value.
func RenderStatus(format int, sums []int64, processes int) (out []byte, err error) {
	defer func() {
		if p := recover(); p != nil {
			out, err = nil, fmt.Errorf("%v: recovered panic: %v", bridge.CodePanic, p)
		}
	}()
	list := backends.Load()
	if list == nil {
		return nil, fmt.Errorf("no backends")
	}
	var routes []status.Route
	for i, b := range *list {
		if (i+1)*statsBackend > len(sums) {
			break
		}
		routes = append(routes, fromBlock(b, sums[i*statsBackend:(i+1)*statsBackend], int64(processes)))
	}
	var buf bytes.Buffer
	switch format {
	case C.MODZMQ_STATUS_JSON:
		status.JSON(&buf, routes)
	case C.MODZMQ_STATUS_METRICS:
		if err := status.Metrics(&buf, func() []status.Route { return routes }, true, nil); err != nil {
			return nil, err
		}
	default:
		status.Text(&buf, fmt.Sprintf("mod_zmq status (%d Apache children)", processes), routes)
	}
	return buf.Bytes(), nil
}

// fromBlock turns a summed backend block into a status route.
func fromBlock(b *backend, block []int64, processes int64) status.Route {
	r := status.Route{Route: b.routes, VHost: b.vhosts, Statuses: map[string]int64{}, Buckets: make([]int64, statusBuckets),
		SumSeconds: float64(block[offSumNs]) / 1e9, Retries: block[offRetries], Overloads: block[offOverloads],
		InFlight: block[offInFlight], GoEntries: &block[offGoEntries], GoWaits: &block[offGoWaits]}
	for code := 0; code < C.MODZMQ_STATS_CODES; code++ {
		if n := block[offCodes+code]; n > 0 {
			r.Statuses[strconv.Itoa(code)] = n
		}
	}
	copy(r.Buckets, block[offBuckets:offBuckets+statusBuckets])
	sf := block[offStreams:]
	r.Streams = &status.Streams{Open: sf[C.MODZMQ_ST_OPEN], Parts: sf[C.MODZMQ_ST_PARTS], Bytes: sf[C.MODZMQ_ST_BYTES],
		Cancels: sf[C.MODZMQ_ST_CANCELS], Buffered: sf[C.MODZMQ_ST_BUFFERED], BodyParts: sf[C.MODZMQ_ST_BODY_PARTS],
		BodyBytes: sf[C.MODZMQ_ST_BODY_BYTES], Ends: map[string]int64{}}
	for k := range len(bridge.StreamStats{}.Ends) {
		r.Streams.Ends[bridge.StreamEnd(k).String()] = sf[C.MODZMQ_ST_ENDS+k]
	}
	for e, ep := range b.endpoints {
		if e >= maxEndpoints {
			break
		}
		f := block[offEndpoints+e*epFields:]
		st := "down"
		if f[C.MODZMQ_EP_UP] > 0 {
			st = fmt.Sprintf("up in %d of %d", f[C.MODZMQ_EP_UP], processes)
		}
		r.Endpoints = append(r.Endpoints, status.Endpoint{Endpoint: ep, State: st, UpIn: f[C.MODZMQ_EP_UP],
			InFlight: f[C.MODZMQ_EP_INFLIGHT], Requests: f[C.MODZMQ_EP_REQUESTS], Replies: f[C.MODZMQ_EP_REPLIES],
			Timeouts: f[C.MODZMQ_EP_TIMEOUTS], NoWorker: f[C.MODZMQ_EP_NOWORKER], Lost: f[C.MODZMQ_EP_LOST],
			BadReplies: f[C.MODZMQ_EP_BADREPLIES], Connected: f[C.MODZMQ_EP_CONNECTED], Disconnected: f[C.MODZMQ_EP_DISCONNECTED],
			ConnectRetried: f[C.MODZMQ_EP_RETRIED], HandshakeFailed: f[C.MODZMQ_EP_HSFAILED]})
	}
	r.Finish()
	if strings.TrimSpace(r.Route) == "" {
		r.Route = strings.Join(b.endpoints, " ")
	}
	return r
}
