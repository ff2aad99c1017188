//go:build modzmq_test

package relay

// Helpers for the stream tests (stream_test.go); see harness.go.

/*
#include <stdlib.h>
#include "modzmq.h"
#include "fast.h"
#include "zmqio.h"

int modzmq_relay(int client, modzmq_request *req, modzmq_response *resp);
int modzmq_resume(modzmq_response *resp);
*/
import "C"

import "unsafe"

// codeEnd is MODZMQ_END, a stream's normal end.
const codeEnd = C.MODZMQ_END

// setStreamWindow gives the client at handle, before its first request,
// the stream window ZmqStreamWindow gives it in Apache.
func setStreamWindow(handle int, window int64) {
	clientAt(C.int(handle)).window = window
}

// streamed is a streamed reply relayed as the shim relays one: its
// outcome, and the last part, which stays readable until release.
type streamed struct {
	rc     int
	err    string
	parts  int // the parts before the last
	copied int // of them, those not read where they arrived (handed over in a buffer, or copied)
	quiet  int // waits after which modzmq_wait asked for no step
	steps  int // waits after which it asked for one
	// waitedFirst counts the parts after which the loop waited before
	// resuming (wait_first).
	waitedFirst int
	// goSteps counts the calls into Go, from the request on.
	goSteps int64
	// onQuiet, when set, is called after each wait that asked for no step.
	onQuiet func(*streamed)
	resp    *C.modzmq_response
	req     *C.modzmq_request
	cs      []*C.char
}

// relayStream relays a GET of target to client as the shim's loop does
// (modzmq_relay; modzmq_wait, and modzmq_resume when it asks, while
// pending; after the head and after each part, modzmq_release and
// modzmq_resume, or modzmq_wait first when wait_first says so), handing each
// part's bytes, valid during the call only, to part.
func relayStream(client int, target string, part func(b []byte), onQuiet func(*streamed)) *streamed {
	return relayStreamUntil(client, target, part, onQuiet, -1)
}

// relayStreamUntil is relayStream whose client goes away after cancelAfter
// parts (when >= 0), as the shim's loop does then: modzmq_cancel
// (Cancel), and the stream ends with code -1.
func relayStreamUntil(client int, target string, part func(b []byte), onQuiet func(*streamed), cancelAfter int) *streamed {
	s := &streamed{req: (*C.modzmq_request)(C.calloc(1, C.sizeof_modzmq_request)),
		resp: (*C.modzmq_response)(C.calloc(1, C.sizeof_modzmq_response)), onQuiet: onQuiet}
	method, ctarget := C.CString("GET"), C.CString(target)
	s.cs = []*C.char{method, ctarget}
	s.req.method, s.req.method_len = method, 3
	s.req.target, s.req.target_len = ctarget, C.size_t(len(target))
	s.req.timeout_ms = 5000
	entries := &clientAt(C.int(client)).b.goEntries
	before := entries.Load()
	defer func() { s.goSteps = entries.Load() - before }()
	rc := C.modzmq_relay(C.int(client), s.req, s.resp)
	for {
		switch rc {
		case C.MODZMQ_PENDING:
			if C.modzmq_wait(s.resp) == 0 {
				s.quiet++
				if s.onQuiet != nil {
					s.onQuiet(s)
				}
				continue
			}
			s.steps++
		case C.MODZMQ_HEAD:
			C.modzmq_release(s.resp)
		case C.MODZMQ_PART:
			st := callState(s.resp)
			s.parts++
			if st.zbuf != nil || st.block != nil {
				s.copied++
			}
			part(view(s.resp.body, s.resp.body_len))
			C.modzmq_release(s.resp)
			if s.parts == cancelAfter {
				Cancel(unsafe.Pointer(s.resp))
				s.rc = -1
				return s
			}
			if s.resp.wait_first != 0 {
				s.waitedFirst++
				rc = C.MODZMQ_PENDING
				continue
			}
		default:
			s.rc, s.err = int(rc), C.GoString(&s.resp.error[0])
			return s
		}
		rc = C.modzmq_resume(s.resp)
	}
}

// bumpEpochs counts a new epoch, as the fast path does when it learns one.
func bumpEpochs() { C.modzmq_epochs_bump() }

// last is the last part (MODZMQ_END), valid until release.
func (s *streamed) last() []byte { return view(s.resp.body, s.resp.body_len) }

func (s *streamed) release() {
	C.modzmq_release(s.resp)
	for _, p := range s.cs {
		C.free(unsafe.Pointer(p))
	}
	C.free(unsafe.Pointer(s.req))
	C.free(unsafe.Pointer(s.resp))
}

// streamCounters is the stream counters of the client at handle as the
// status page sums them: its fast path's (the C steps count there) and its
// Go client's.
func streamCounters(handle int) (buffered, parts, bytes int64) {
	c := clientAt(C.int(handle))
	sums := make([]int64, C.MODZMQ_STATS_BACKEND)
	if c.fast != nil {
		C.modzmq_fast_add_stats(c.fast, (*C.int64_t)(unsafe.Pointer(&sums[0])))
	}
	f, ss := sums[offStreams:], c.StreamStats()
	return f[C.MODZMQ_ST_BUFFERED] + ss.Buffered.Load(), f[C.MODZMQ_ST_PARTS] + ss.Parts.Load(),
		f[C.MODZMQ_ST_BYTES] + ss.Bytes.Load()
}

// setNotices gives the client at handle, before its first request, the
// cancel notices ZmqNotices on gives it in Apache.
func setNotices(handle int) {
	clientAt(C.int(handle)).opts.Notices = true
}
