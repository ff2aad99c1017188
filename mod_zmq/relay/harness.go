//go:build modzmq_test

package relay

// Helpers for the package's tests, which cannot use cgo themselves. The
// build tag keeps them out of the library users install; make test sets it.

/*
#include <stdlib.h>
#include <string.h>
#include "modzmq.h"
#include "fast.h"
#include "wsfast.h"
#include "zmqio.h"
#include "zmtp.h"

#include <poll.h>

int modzmq_relay(int client, modzmq_request *req, modzmq_response *resp);
int modzmq_resume(modzmq_response *resp);

// Waits for resp's connection to have input, receiving nothing.
static void poll_only(modzmq_response *resp)
{
    if (MODZMQ_CALL(resp)->zconn != NULL) {
        struct pollfd p = {zmtp_fd(MODZMQ_CALL(resp)->zconn), POLLIN, 0};
        poll(&p, 1, MODZMQ_CALL(resp)->wait_ms);
    }
}
*/
import "C"

import (
	"syscall"
	"time"
	"unsafe"

	"github.com/modzmq/modzmq/bridge"
	"github.com/modzmq/modzmq/internal/zmqtest"
)

// fastDecode runs the fast path's reply check (modzmq_fast_decode) on
// frames copied into C memory, for tests.
func fastDecode(frames [][]byte, maxReply int64) (ok bool, resp bridge.Response) {
	n := len(frames)
	if n == 0 {
		n = 1 // room for the C arrays; the count passed is still 0
	}
	// The arrays hold only C pointers, so they may be Go memory; the frames
	// are C memory, as libzmq's are.
	ptrs, lens := make([]*C.char, n), make([]C.size_t, n)
	for i, f := range frames {
		p := C.malloc(C.size_t(len(f) + 1))
		copy(unsafe.Slice((*byte)(p), len(f)), f)
		ptrs[i], lens[i] = (*C.char)(p), C.size_t(len(f))
		defer C.free(p)
	}
	var status C.int
	var reason, headers, body *C.char
	var reasonLen, headersLen, bodyLen C.size_t
	if C.modzmq_fast_decode(&ptrs[0], &lens[0], C.int(len(frames)), C.int64_t(maxReply), &status,
		&reason, &reasonLen, &headers, &headersLen, &body, &bodyLen) == 0 {
		return false, resp
	}
	resp.Status = int(status)
	resp.Reason = C.GoBytes(unsafe.Pointer(reason), C.int(reasonLen))
	resp.Headers = C.GoBytes(unsafe.Pointer(headers), C.int(headersLen))
	resp.Body = C.GoBytes(unsafe.Pointer(body), C.int(bodyLen))
	return true, resp
}

// cCopy copies b into C memory (one byte more, so that an empty b has an
// address), for the C under test to read as it reads libzmq's or Apache's;
// the caller frees it.
func cCopy(b []byte) *C.uchar {
	p := C.malloc(C.size_t(len(b) + 1))
	copy(unsafe.Slice((*byte)(p), len(b)), b)
	return (*C.uchar)(p)
}

// wsFrame runs the C step's frame check (modzmq_ws_frame) on b and, when it
// takes the frame, unmasks its payload (modzmq_ws_mask): the frame's size
// (0: not taken), opcode and payload.
func wsFrame(b []byte, max int64) (n int, opcode int, payload []byte) {
	p := cCopy(b)
	defer C.free(unsafe.Pointer(p))
	var op C.int
	var off, size C.size_t
	var key [4]C.uchar
	got := C.modzmq_ws_frame(p, C.size_t(len(b)), C.int64_t(max), &op, &off, &size, &key[0])
	if got == 0 {
		return 0, 0, nil
	}
	at := (*C.uchar)(unsafe.Add(unsafe.Pointer(p), off))
	C.modzmq_ws_mask(at, size, &key[0])
	return int(got), int(op), C.GoBytes(unsafe.Pointer(at), C.int(size))
}

// utf8Valid runs the C step's UTF-8 check (modzmq_utf8_valid) on b.
func utf8Valid(b []byte) bool {
	p := cCopy(b)
	defer C.free(unsafe.Pointer(p))
	return C.modzmq_utf8_valid(p, C.size_t(len(b))) != 0
}

// wsHeader returns the header the C step writes for a server frame
// carrying a whole message of n bytes (modzmq_ws_header).
func wsHeader(opcode int, n uint64) []byte {
	var b [10]C.uchar
	size := C.modzmq_ws_header(&b[0], C.int(opcode), C.uint64_t(n))
	return C.GoBytes(unsafe.Pointer(&b[0]), C.int(size))
}

// partCost is the C paths' cost of a part or message beyond its bytes
// (MODZMQ_PART_COST).
func partCost() int64 { return C.MODZMQ_PART_COST }

// bodyPart is the shim's largest streamed body part (MODZMQ_BODY_PART).
func bodyPart() int { return C.MODZMQ_BODY_PART }

// wsCredit runs the C step's credit parser (modzmq_ws_credit) on s.
func wsCredit(s []byte) (v int64, ok bool) {
	p := cCopy(s)
	defer C.free(unsafe.Pointer(p))
	var x C.int64_t
	if C.modzmq_ws_credit((*C.char)(unsafe.Pointer(p)), C.size_t(len(s)), &x) == 0 {
		return 0, false
	}
	return int64(x), true
}

// fastEncode runs the fast path's request encoder (modzmq_fast_encode) on
// r and id copied into C memory, with stackSize bytes of room for the meta
// frame before it allocates, and returns the frames it built.
func fastEncode(id []byte, r *bridge.Request, notices bool, stackSize int) [][]byte {
	cbytes := func(b []byte) (*C.char, C.size_t) { return (*C.char)(unsafe.Pointer(cCopy(b))), C.size_t(len(b)) }
	req := (*C.modzmq_request)(C.calloc(1, C.sizeof_modzmq_request))
	defer C.free(unsafe.Pointer(req))
	req.method, req.method_len = cbytes(r.Method)
	req.target, req.target_len = cbytes(r.Target)
	req.headers, req.headers_len = cbytes(r.Headers)
	req.meta, req.meta_len = cbytes(r.Meta)
	req.body, req.body_len = cbytes(r.Body)
	cid, idLen := cbytes(id)
	for _, p := range []*C.char{req.method, req.target, req.headers, req.meta, req.body, cid} {
		defer C.free(unsafe.Pointer(p))
	}
	stack := C.malloc(C.size_t(max(stackSize, 1)))
	defer C.free(stack)
	ptrs := (*[8]unsafe.Pointer)(C.calloc(8, C.size_t(unsafe.Sizeof(unsafe.Pointer(nil)))))
	lens := (*[8]C.size_t)(C.calloc(8, C.size_t(unsafe.Sizeof(C.size_t(0)))))
	defer C.free(unsafe.Pointer(ptrs))
	defer C.free(unsafe.Pointer(lens))
	var heap *C.char
	cnotices := C.int(0)
	if notices {
		cnotices = 1
	}
	if C.modzmq_fast_encode(req, cid, idLen, C.int64_t(r.StreamWindow), cnotices, (*C.char)(stack), C.size_t(stackSize),
		&heap, &ptrs[0], &lens[0]) != 0 {
		return nil
	}
	defer C.free(unsafe.Pointer(heap))
	frames := make([][]byte, 8)
	for i := range frames {
		frames[i] = C.GoBytes(ptrs[i], C.int(lens[i]))
	}
	return frames
}

// relayed is one request's outcome through the library's entry points.
type relayed struct {
	rc                    int
	status                int
	reason, headers, body []byte
	err                   string
}

// relayLeavingReplyQueued relays a GET of target to client as the shim
// does (modzmq_relay, then wait and resume until done, then release), except
// that its waits only poll: they leave a reply queued on the socket instead
// of receiving it, as when a reply lands just after modzmq_wait gave up.
func relayLeavingReplyQueued(client int, target string) relayed {
	return relayGetWith(client, target, 5000, func(resp *C.modzmq_response) C.int {
		C.modzmq_release(resp)
		C.poll_only(resp)
		return C.modzmq_resume(resp)
	})
}

// relayGet relays a GET of target to client with a timeout of timeoutMS as
// the shim does: modzmq_relay, then wait and resume until done, then release.
func relayGet(client int, target string, timeoutMS int64) relayed {
	return relayGetWith(client, target, timeoutMS, func(resp *C.modzmq_response) C.int {
		if C.modzmq_wait(resp) != 0 {
			return C.modzmq_resume(resp)
		}
		return C.MODZMQ_PENDING
	})
}

// relayGetWith relays a GET of target to client with a timeout of
// timeoutMS, calling step while the call is pending, then releases it.
func relayGetWith(client int, target string, timeoutMS int64, step func(*C.modzmq_response) C.int) relayed {
	req := (*C.modzmq_request)(C.calloc(1, C.sizeof_modzmq_request))
	resp := (*C.modzmq_response)(C.calloc(1, C.sizeof_modzmq_response))
	method, ctarget := C.CString("GET"), C.CString(target)
	defer func() {
		C.free(unsafe.Pointer(method))
		C.free(unsafe.Pointer(ctarget))
		C.free(unsafe.Pointer(req))
		C.free(unsafe.Pointer(resp))
	}()
	req.method, req.method_len = method, 3
	req.target, req.target_len = ctarget, C.size_t(len(target))
	req.timeout_ms = C.int64_t(timeoutMS)
	rc := C.modzmq_relay(C.int(client), req, resp)
	for rc == C.MODZMQ_PENDING {
		rc = step(resp)
	}
	out := relayed{rc: int(rc), err: C.GoString(&resp.error[0])}
	if rc == C.MODZMQ_OK {
		out.status = int(resp.status)
		out.reason = C.GoBytes(unsafe.Pointer(resp.reason), C.int(resp.reason_len))
		out.headers = C.GoBytes(unsafe.Pointer(resp.headers), C.int(resp.headers_len))
		out.body = C.GoBytes(unsafe.Pointer(resp.body), C.int(resp.body_len))
	}
	C.modzmq_release(resp)
	return out
}

// hasFastPath reports whether client h has its C fast path.
func hasFastPath(h int) bool { return clientAt(C.int(h)).fast != nil }

// endpointState is the state of client h's endpoint i.
func endpointState(h, i int) bridge.State { return clientAt(C.int(h)).Status()[i].State }

// openTestClient opens endpoint as a ZmqBackend and makes a client of it
// with the default options, as the shim's loader does; it returns the
// client's handle, or 0 and why.
func openTestClient(endpoint string) (int, string) {
	b, err := OpenBackend(endpoint, "/test", "localhost:80", 2*time.Second)
	if err != nil {
		return 0, err.Error()
	}
	handle := 1
	for handle <= C.MODZMQ_MAX_CLIENTS && clients[handle].Load() != nil {
		handle++
	}
	cfg := (*C.modzmq_client_config)(C.calloc(1, C.sizeof_modzmq_client_config))
	defer C.free(unsafe.Pointer(cfg))
	cfg.backend = C.int(b)
	if !OpenClients(handle, 1, unsafe.Pointer(cfg)) {
		return 0, "OpenClients refused the handle"
	}
	if err := clientAt(C.int(handle)).err; err != nil {
		return 0, err.Error()
	}
	return handle, ""
}

// zmtpTest is a ZMTP connection (zmtp.h) driven from Go, for tests.
type zmtpTest struct{ z *C.zmtp_conn }

func zmtpDial(endpoint string, timeoutMS int, maxMsgSize int64) (*zmtpTest, error) {
	cep := C.CString(endpoint)
	defer C.free(unsafe.Pointer(cep))
	z, err := C.zmtp_connect(cep, C.int(timeoutMS), C.int64_t(maxMsgSize))
	if z == nil {
		return nil, err
	}
	return &zmtpTest{z}, nil
}

// send writes one message; 0 or an errno value.
func (c *zmtpTest) send(frames ...[]byte) syscall.Errno {
	n := len(frames)
	ptrs := (*[C.ZMTP_MAX_FRAMES]unsafe.Pointer)(C.calloc(C.ZMTP_MAX_FRAMES, C.size_t(unsafe.Sizeof(unsafe.Pointer(nil)))))
	lens := (*[C.ZMTP_MAX_FRAMES]C.size_t)(C.calloc(C.ZMTP_MAX_FRAMES, C.size_t(unsafe.Sizeof(C.size_t(0)))))
	defer C.free(unsafe.Pointer(ptrs))
	defer C.free(unsafe.Pointer(lens))
	for i, f := range frames[:min(n, C.ZMTP_MAX_FRAMES)] {
		ptrs[i] = C.CBytes(append(f, 0))
		lens[i] = C.size_t(len(f))
		defer C.free(ptrs[i])
	}
	return syscall.Errno(C.zmtp_send(c.z, 1000, C.int(n), &ptrs[0], &lens[0]))
}

// sendBatch writes msgs, each of the same number of frames, with one
// zmtp_send_batch; 0 or an errno value.
func (c *zmtpTest) sendBatch(msgs ...[][]byte) syscall.Errno {
	var ptrs []unsafe.Pointer
	var lens []C.size_t
	for _, m := range msgs {
		for _, f := range m {
			p := C.CBytes(append(f, 0))
			defer C.free(p)
			ptrs = append(ptrs, p)
			lens = append(lens, C.size_t(len(f)))
		}
	}
	n := 0
	if len(msgs) > 0 {
		n = len(msgs[0])
	}
	cp := (*unsafe.Pointer)(C.calloc(C.size_t(max(len(ptrs), 1)), C.size_t(unsafe.Sizeof(unsafe.Pointer(nil)))))
	cl := (*C.size_t)(C.calloc(C.size_t(max(len(lens), 1)), C.size_t(unsafe.Sizeof(C.size_t(0)))))
	defer C.free(unsafe.Pointer(cp))
	defer C.free(unsafe.Pointer(cl))
	copy(unsafe.Slice(cp, len(ptrs)), ptrs)
	copy(unsafe.Slice(cl, len(lens)), lens)
	return syscall.Errno(C.zmtp_send_batch(c.z, 1000, C.int(len(msgs)), C.int(n), cp, cl))
}

// sendBatchOf calls zmtp_send_batch for nmsg messages of n frames, with no
// frames: for the counts it refuses before it reads any.
func (c *zmtpTest) sendBatchOf(nmsg, n int) syscall.Errno {
	return syscall.Errno(C.zmtp_send_batch(c.z, 1000, C.int(nmsg), C.int(n), nil, nil))
}

// zmtpMaxBatch is the most messages zmtp_send_batch takes (ZMTP_MAX_BATCH).
func zmtpMaxBatch() int { return C.ZMTP_MAX_BATCH }

// writes is how many writes the connection made (zmtp_writes).
func (c *zmtpTest) writes() uint64 { return uint64(C.zmtp_writes(c.z)) }

// recv waits up to timeoutMS for a message: its frames and zmtp_recv's
// code.
func (c *zmtpTest) recv(timeoutMS int) (msg [][]byte, rc int) {
	var frame [C.ZMTP_MAX_RECV_FRAMES]*C.char
	var size [C.ZMTP_MAX_RECV_FRAMES]C.size_t
	var n C.int
	r := C.zmtp_recv(c.z, C.int(timeoutMS), &frame[0], &size[0], &n)
	if r <= 0 {
		return nil, int(r)
	}
	for i := 0; i < int(n); i++ {
		msg = append(msg, C.GoBytes(unsafe.Pointer(frame[i]), C.int(size[i])))
	}
	return msg, int(r)
}

func (c *zmtpTest) check() syscall.Errno { return syscall.Errno(C.zmtp_check(c.z)) }
func (c *zmtpTest) close()               { C.zmtp_close(c.z) }
func (c *zmtpTest) redial(timeoutMS int) syscall.Errno {
	return syscall.Errno(C.zmtp_redial(c.z, C.int(timeoutMS)))
}

// zmtpStream feeds data, as a peer's bytes from its greeting on, to a
// connection over a socket pair, chunk bytes at a time (all at once when
// chunk <= 0), then ends the stream; it returns the messages read and the
// code that ended the reading (an errno value; EPIPE at the end of the
// stream), or the handshake's errno with no messages. What the connection
// writes (PONGs) is read and dropped.
func zmtpStream(data []byte, maxMsgSize int64, chunk int) (msgs [][][]byte, end syscall.Errno) {
	fd, done, err := zmqtest.PeerSocket(data, chunk)
	if err != nil {
		return nil, err.(syscall.Errno)
	}
	defer done()
	z, cerr := C.zmtp_attach(C.int(fd), 2000, C.int64_t(maxMsgSize))
	if z == nil {
		e, _ := cerr.(syscall.Errno)
		return nil, e
	}
	c := &zmtpTest{z}
	defer c.close()
	for {
		msg, rc := c.recv(2000)
		if rc <= 0 {
			return msgs, syscall.Errno(-rc)
		}
		msgs = append(msgs, msg)
	}
}

// zmtpStreamClosing is zmtpStream with a peer that closes its socket,
// reading nothing, once the handshake is done and data written: the
// connection's PONGs then fail to go out.
func zmtpStreamClosing(data []byte, chunk int) (msgs [][][]byte, end syscall.Errno) {
	fds, err := syscall.Socketpair(syscall.AF_UNIX, syscall.SOCK_STREAM|syscall.SOCK_CLOEXEC, 0)
	if err != nil {
		return nil, err.(syscall.Errno)
	}
	if chunk <= 0 {
		chunk = len(data)
	}
	for len(data) > 0 {
		n, err := syscall.Write(fds[1], data[:min(chunk, len(data))])
		if err == syscall.EINTR {
			continue
		}
		if err != nil {
			break
		}
		data = data[n:]
	}
	syscall.SetNonblock(fds[0], true)
	z, cerr := C.zmtp_attach(C.int(fds[0]), 2000, 0)
	syscall.Close(fds[1])
	if z == nil {
		e, _ := cerr.(syscall.Errno)
		return nil, e
	}
	c := &zmtpTest{z}
	defer c.close()
	for {
		msg, rc := c.recv(2000)
		if rc <= 0 {
			return msgs, syscall.Errno(-rc)
		}
		msgs = append(msgs, msg)
	}
}

// zmtpHeadersParsed feeds data (a peer's bytes from its greeting on) to a
// connection chunk bytes at a time, reads it all, and returns how many
// messages it read, how many times the reader looked at a frame header, and
// how many of its reads brought bytes.
func zmtpHeadersParsed(data []byte, chunk int) (msgs int, headers, reads uint64) {
	fd, done, err := zmqtest.PeerSocket(data, chunk)
	if err != nil {
		return 0, 0, 0
	}
	defer done()
	z := C.zmtp_attach(C.int(fd), 2000, 0)
	if z == nil {
		return 0, 0, 0
	}
	defer C.zmtp_close(z)
	var frame [C.ZMTP_MAX_RECV_FRAMES]*C.char
	var size [C.ZMTP_MAX_RECV_FRAMES]C.size_t
	var n C.int
	for C.zmtp_recv(z, 2000, &frame[0], &size[0], &n) > 0 {
		msgs++
	}
	return msgs, uint64(C.zmtp_headers_parsed(z)), uint64(C.zmtp_reads(z))
}

// zmtpLimits are the reader's constants of zmtp.h, for the test that they
// are the specification's.
func zmtpLimits() (maxFrames, frameCost int) {
	return C.ZMTP_MAX_RECV_FRAMES, C.ZMTP_FRAME_COST
}

// zmtpBufferAfter feeds data (a peer's bytes from its greeting on) to a
// connection, reads until the data runs out, and returns the size its read
// buffer grew to.
func zmtpBufferAfter(data []byte, maxMsgSize int64) int {
	fd, done, err := zmqtest.PeerSocket(data, 0)
	if err != nil {
		return -1
	}
	defer done()
	z := C.zmtp_attach(C.int(fd), 2000, C.int64_t(maxMsgSize))
	if z == nil {
		return -1
	}
	defer C.zmtp_close(z)
	var frame [C.ZMTP_MAX_RECV_FRAMES]*C.char
	var size [C.ZMTP_MAX_RECV_FRAMES]C.size_t
	var n C.int
	for C.zmtp_recv(z, 100, &frame[0], &size[0], &n) > 0 {
	}
	return int(C.zmtp_buffer_size(z))
}

// zmtpHandshake runs a connection's handshake against peer, a peer's bytes
// from its greeting on (then the end of its stream), with a size limit:
// 0 when the connection was made, or the errno zmtp_attach failed with.
func zmtpHandshake(peer []byte, maxMsgSize int64) syscall.Errno {
	fds, err := syscall.Socketpair(syscall.AF_UNIX, syscall.SOCK_STREAM|syscall.SOCK_CLOEXEC, 0)
	if err != nil {
		return err.(syscall.Errno)
	}
	defer syscall.Close(fds[1])
	for len(peer) > 0 {
		n, err := syscall.Write(fds[1], peer)
		if err == syscall.EINTR {
			continue
		}
		if err != nil {
			return err.(syscall.Errno)
		}
		peer = peer[n:]
	}
	syscall.Shutdown(fds[1], syscall.SHUT_WR)
	syscall.SetNonblock(fds[0], true)
	z, cerr := C.zmtp_attach(C.int(fds[0]), 2000, C.int64_t(maxMsgSize))
	if z == nil {
		e, _ := cerr.(syscall.Errno)
		return e
	}
	C.zmtp_close(z)
	return 0
}

// controlFrames is modzmq_control_frames's message, copied into Go.
func controlFrames(id, method, target, body []byte) [][]byte {
	cid, cmethod, ctarget, cbody := cCopy(id), C.CString(string(method)), cCopy(target), cCopy(body)
	defer func() {
		for _, p := range []unsafe.Pointer{unsafe.Pointer(cid), unsafe.Pointer(cmethod), unsafe.Pointer(ctarget),
			unsafe.Pointer(cbody)} {
			C.free(p)
		}
	}()
	meta := C.malloc(C.MODZMQ_CONTROL_META)
	defer C.free(meta)
	ptrs := (*[8]unsafe.Pointer)(C.calloc(8, C.size_t(unsafe.Sizeof(unsafe.Pointer(nil)))))
	lens := (*[8]C.size_t)(C.calloc(8, C.size_t(unsafe.Sizeof(C.size_t(0)))))
	defer C.free(unsafe.Pointer(ptrs))
	defer C.free(unsafe.Pointer(lens))
	C.modzmq_control_frames((*C.char)(unsafe.Pointer(cid)), C.size_t(len(id)), cmethod,
		(*C.char)(unsafe.Pointer(ctarget)), C.size_t(len(target)), unsafe.Pointer(cbody), C.size_t(len(body)),
		(*C.char)(meta), &ptrs[0], &lens[0])
	frames := make([][]byte, 8)
	for i := range frames {
		frames[i] = C.GoBytes(ptrs[i], C.int(lens[i]))
	}
	return frames
}

// streamKind is modzmq_stream_kind's verdict on a worker's message for a
// stream of request id with credit, and the data it found.
func streamKind(frames [][]byte, id []byte, credit int64) (kind int, data []byte) {
	n := len(frames)
	ptrs := (*[16]*C.char)(C.calloc(16, C.size_t(unsafe.Sizeof(unsafe.Pointer(nil)))))
	lens := (*[16]C.size_t)(C.calloc(16, C.size_t(unsafe.Sizeof(C.size_t(0)))))
	defer C.free(unsafe.Pointer(ptrs))
	defer C.free(unsafe.Pointer(lens))
	for i := range min(n, 16) {
		ptrs[i], lens[i] = (*C.char)(unsafe.Pointer(cCopy(frames[i]))), C.size_t(len(frames[i]))
		defer C.free(unsafe.Pointer(ptrs[i]))
	}
	cid := cCopy(id)
	defer C.free(unsafe.Pointer(cid))
	var p *C.char
	var l C.size_t
	kind = int(C.modzmq_stream_kind(&ptrs[0], &lens[0], C.int(n), (*C.char)(unsafe.Pointer(cid)), C.size_t(len(id)), C.int64_t(credit), &p, &l))
	if kind != 0 && l > 0 {
		data = C.GoBytes(unsafe.Pointer(p), C.int(l))
	}
	return kind, data
}
