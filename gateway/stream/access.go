package stream

import (
	"time"

	"github.com/modzmq/modzmq/gateway"
)

// Access log. Each request gets one line (gateway.AppendAccessLine, the
// HTTP mode's format) when its answer ends: when the owner handed the last
// of it to libzmq, when a streamed reply broke (the status of its head), or
// when the connection closed first (499). The owner writes every line, into
// a buffer of its own that the loop writes out once per wake-up (flushLog),
// so a line costs no allocation and a busy loop one write for many lines.
//
// A slot carries what its line needs. The owner sets req and start when it
// makes the slot; the relay sets status, id and part before it hands the
// slot over (complete), and part again with each piece of a streamed reply;
// the owner reads them once it took the slot from the queue (seen). A
// connection that closes while a relay still has its slot leaves the line
// to when the relay hands it over (drainQueue).

// logFlushAt is how many bytes of lines make flushLog write before the
// loop's wake-up is over.
const logFlushAt = 32 << 10

// track makes sl the answer to r in the access log, when there is one.
func (s *Server) track(sl *slot, r *Request) {
	if !s.logOn || r == nil {
		return
	}
	sl.req, sl.start, sl.id = r, time.Now(), sl.idBuf[:0]
}

// idOf is where the relay of sl puts the request id its worker saw; nil
// when sl has no access log line.
func idOf(sl *slot) *[]byte {
	if sl.req == nil {
		return nil
	}
	return &sl.id
}

// logSlot adds sl's access log line, once: with its status, or 499 when
// the client went away before the answer ended (gone) or it has none.
func (s *Server) logSlot(sl *slot, gone bool) {
	if sl.req == nil || sl.logged {
		return
	}
	sl.logged = true
	status := sl.status
	if gone || status == 0 {
		status = gateway.StatusClientGone
	}
	host := sl.c.peer
	if host == "" {
		host = "-"
	}
	r := sl.req
	e := gateway.AccessEntry{Host: host, Method: r.Method, URI: r.Target, Proto: r.Proto, Start: sl.start,
		Status: status, Bytes: sl.bytes, ID: sl.id}
	s.logBuf = gateway.AppendAccessLine(s.logBuf, &e)
	if len(s.logBuf) >= logFlushAt {
		s.flushLog()
	}
}

// flushLog writes the lines logSlot added.
func (s *Server) flushLog() {
	if len(s.logBuf) == 0 {
		return
	}
	s.access.Write(s.logBuf)
	s.logBuf = s.logBuf[:0]
}

// checkLog looks at whether the access log takes lines: a log a reload
// set to off (gateway.ReopenableLog) costs no line formatted from the next
// sweep on, and one set on again gets them from then.
func (s *Server) checkLog() {
	s.logOn = s.access != nil
	if o, ok := s.access.(interface{ Off() bool }); ok && o.Off() {
		s.logOn = false
	}
}
