// Command golib is libmodzmq.so, the library mod_zmq.so loads in each Apache
// child: the exports of modzmq.h, each a few lines that view or copy its
// inputs, call one function of package relay (the request path: its C relay
// and the Go that manages it) and map the result. modzmq_relay, modzmq_wait,
// modzmq_ready, modzmq_release, modzmq_call_info, modzmq_waits,
// modzmq_send_body and modzmq_ws_step are the relay's C, exported as they
// are. Nothing here may
// end the process: it runs inside an Apache child alongside every other
// request, so each relay entry point recovers its panics.
package main

/*
#include <stdlib.h>
#include "modzmq.h"

static void modzmq_call_log(modzmq_log_fn fn, int level, const char *msg) { fn(level, msg); }
*/
import "C"

import (
	"time"
	"unsafe"

	"github.com/modzmq/modzmq/mod_zmq/relay"
)

func main() {}

//export modzmq_abi_version
func modzmq_abi_version() C.int { return C.MODZMQ_ABI_VERSION }

//export modzmq_init
func modzmq_init(logfn C.modzmq_log_fn, level C.int, maxProcs C.int) C.int {
	var emit func(level int, msg string)
	if logfn != nil {
		emit = func(l int, msg string) {
			cs := C.CString(msg)
			C.modzmq_call_log(logfn, C.int(l), cs)
			C.free(unsafe.Pointer(cs))
		}
	}
	if !relay.Init(int(maxProcs), int(level), emit) {
		return -1
	}
	return 0
}

//export modzmq_backend_open
func modzmq_backend_open(endpoints, routes, vhosts *C.char, connectTimeoutMS C.int64_t, errbuf *C.char, errlen C.size_t) C.int {
	h, err := relay.OpenBackend(C.GoString(endpoints), C.GoString(routes), C.GoString(vhosts), time.Duration(connectTimeoutMS)*time.Millisecond)
	if err != nil {
		relay.SetError(unsafe.Pointer(errbuf), int(errlen), err.Error())
	}
	return C.int(h)
}

//export modzmq_clients_open
func modzmq_clients_open(first, n C.int, cfg *C.modzmq_client_config) C.int {
	if !relay.OpenClients(int(first), int(n), unsafe.Pointer(cfg)) {
		return -1
	}
	return 0
}

//export modzmq_stats_attach
func modzmq_stats_attach(slot *C.int64_t, nbackends C.int, watchers *C.int64_t) {
	if slot == nil || watchers == nil || nbackends <= 0 {
		return
	}
	relay.AttachStats(unsafe.Slice((*int64)(unsafe.Pointer(slot)), relay.StatsWords(int(nbackends))),
		unsafe.Slice((*int64)(unsafe.Pointer(watchers)), int(nbackends)))
}

//export modzmq_stats_flush
func modzmq_stats_flush() {
	defer func() { recover() }()
	relay.FlushStats()
}

//export modzmq_status_render
func modzmq_status_render(format C.int, sums *C.int64_t, nbackends C.int, processes C.int, out **C.char, outLen *C.size_t) C.int {
	if sums == nil || nbackends <= 0 {
		return -1
	}
	page, err := relay.RenderStatus(int(format), unsafe.Slice((*int64)(unsafe.Pointer(sums)), int(nbackends)*relay.BlockWords), int(processes))
	if err != nil {
		return -1
	}
	p := C.malloc(C.size_t(len(page) + 1))
	if p == nil {
		return -1
	}
	copy(unsafe.Slice((*byte)(p), len(page)), page)
	*out, *outLen = (*C.char)(p), C.size_t(len(page))
	return 0
}

//export modzmq_cancel
func modzmq_cancel(resp *C.modzmq_response) {
	relay.Cancel(unsafe.Pointer(resp))
}
