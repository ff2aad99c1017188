package bridge

import (
	"encoding/binary"
	"fmt"
	"testing"
	"time"

	zmq "github.com/pebbe/zmq4"
)

// monitorFrame encodes an event as libzmq 4.x's monitor sends it in frame 1.
func monitorFrame(e zmq.Event, value uint32) []byte {
	return binary.NativeEndian.AppendUint32(binary.NativeEndian.AppendUint16(nil, uint16(e)), value)
}

func TestDecodeMonitorEvent(t *testing.T) {
	retried := monitorFrame(zmq.EVENT_CONNECT_RETRIED, 150)
	// The same 6 bytes at an odd offset: the decoder reads them wherever they are.
	odd := append([]byte{0}, retried...)[1:]
	tests := []struct {
		name      string
		msg       [][]byte
		wantEvent zmq.Event
		wantAddr  string
		wantValue int
		wantErr   bool
	}{
		{"retried", [][]byte{retried, []byte("tcp://127.0.0.1:1")}, zmq.EVENT_CONNECT_RETRIED, "tcp://127.0.0.1:1", 150, false},
		{"odd offset", [][]byte{odd, []byte("tcp://h:2")}, zmq.EVENT_CONNECT_RETRIED, "tcp://h:2", 150, false},
		{"handshake", [][]byte{monitorFrame(zmq.EVENT_HANDSHAKE_SUCCEEDED, 0), nil}, zmq.EVENT_HANDSHAKE_SUCCEEDED, "", 0, false},
		// RecvEvent converts the uint32 to a C int: values past 2^31 come out negative.
		{"value sign", [][]byte{monitorFrame(zmq.EVENT_HANDSHAKE_FAILED_NO_DETAIL, 0xffffffff), nil}, zmq.EVENT_HANDSHAKE_FAILED_NO_DETAIL, "", -1, false},
		{"high event id", [][]byte{monitorFrame(0xffff, 7), []byte("x")}, 0xffff, "x", 7, false},
		{"no frames", nil, 0, "", 0, true},
		{"no address frame", [][]byte{retried}, 0, "", 0, true},
		{"extra frame", [][]byte{retried, nil, nil}, 0, "", 0, true},
		{"short event frame", [][]byte{retried[:5], nil}, 0, "", 0, true},
		{"long event frame", [][]byte{append(retried, 0), nil}, 0, "", 0, true},
		{"empty event frame", [][]byte{{}, nil}, 0, "", 0, true},
	}
	for _, tc := range tests {
		t.Run(tc.name, func(t *testing.T) {
			e, addr, value, err := decodeMonitorEvent(tc.msg)
			if (err != nil) != tc.wantErr {
				t.Fatalf("err = %v, want error %v", err, tc.wantErr)
			}
			if e != tc.wantEvent || addr != tc.wantAddr || value != tc.wantValue {
				t.Errorf("got (%v, %q, %d), want (%v, %q, %d)", e, addr, value, tc.wantEvent, tc.wantAddr, tc.wantValue)
			}
		})
	}
}

// The decoder reads what a real libzmq monitor sends: the event, its
// value and the endpoint's address.
func TestDecodeMonitorEventFromLibzmq(t *testing.T) {
	ep := startREP(t, func(r [][]byte) [][]byte { return r })
	s, err := zmq.NewSocket(zmq.DEALER)
	if err != nil {
		t.Fatal(err)
	}
	defer s.Close()
	s.SetLinger(0)
	addr := fmt.Sprintf("inproc://monitor-test-%d", monitorSeq.Add(1))
	if err := s.Monitor(addr, zmq.EVENT_HANDSHAKE_SUCCEEDED); err != nil {
		t.Fatal(err)
	}
	defer unmonitor(s)
	mon, err := zmq.NewSocket(zmq.PAIR)
	if err != nil {
		t.Fatal(err)
	}
	defer mon.Close()
	mon.SetLinger(0)
	mon.SetRcvtimeo(10 * time.Second)
	if err := mon.Connect(addr); err != nil {
		t.Fatal(err)
	}
	if err := s.Connect(ep); err != nil {
		t.Fatal(err)
	}
	msg, err := mon.RecvMessageBytes(0)
	if err != nil {
		t.Fatal(err)
	}
	e, gotAddr, value, err := decodeMonitorEvent(msg)
	if err != nil || e != zmq.EVENT_HANDSHAKE_SUCCEEDED || gotAddr != ep || value != 0 {
		t.Errorf("got (%v, %q, %d, %v), want (%v, %q, 0, nil)", e, gotAddr, value, err, zmq.EVENT_HANDSHAKE_SUCCEEDED, ep)
	}
}

// Watch reports the value libzmq puts in a connect-retried event: the next
// interval, which libzmq (4.3) draws from [ZMQ_RECONNECT_IVL, 2*ZMQ_RECONNECT_IVL)
// with the default of 100 ms. A value read at the wrong offset or in the
// wrong byte order falls outside it.
func TestWatchReportsLibzmqRetryInterval(t *testing.T) {
	tr := &ZMQ{}
	details := make(chan string, 10)
	stop, err := tr.Watch([]string{"tcp://127.0.0.1:1"}, DialOptions{}, func(_ string, ev EventKind, detail string) {
		if ev == EventConnectRetried {
			select {
			case details <- detail:
			default:
			}
		}
	})
	if err != nil {
		t.Fatal(err)
	}
	defer stop()
	select {
	case d := <-details:
		var ms int
		if _, err := fmt.Sscanf(d, "next attempt in %d ms", &ms); err != nil || ms < 100 || ms >= 200 {
			t.Errorf("detail %q: want \"next attempt in N ms\" with 100 <= N < 200", d)
		}
	case <-time.After(30 * time.Second):
		t.Fatal("no connect-retried event")
	}
}

func FuzzDecodeMonitorEvent(f *testing.F) {
	f.Add(uint8(2), monitorFrame(zmq.EVENT_CONNECT_RETRIED, 100), []byte("tcp://127.0.0.1:1"))
	f.Add(uint8(2), monitorFrame(zmq.EVENT_HANDSHAKE_FAILED_PROTOCOL, 0x80000000), []byte{})
	f.Add(uint8(1), []byte{1, 2, 3, 4, 5, 6}, []byte("x"))
	f.Add(uint8(2), []byte{1, 2, 3}, []byte("x"))
	f.Fuzz(func(t *testing.T, n uint8, event, addr []byte) {
		msg := [][]byte{event, addr, addr}[:n%4]
		e, gotAddr, value, err := decodeMonitorEvent(msg)
		valid := len(msg) == 2 && len(event) == 6
		if (err == nil) != valid {
			t.Fatalf("%d frames, event frame of %d bytes: err = %v", len(msg), len(event), err)
		}
		if err != nil {
			return
		}
		if e < 0 || e > 0xffff || value < -1<<31 || value >= 1<<31 {
			t.Fatalf("event %d, value %d out of range", e, value)
		}
		// What is accepted re-encodes to the same bytes.
		if again := monitorFrame(e, uint32(value)); string(again) != string(event) || gotAddr != string(addr) {
			t.Fatalf("(%v, %q, %d) re-encodes to %x, %q; input %x, %q", e, gotAddr, value, again, gotAddr, event, addr)
		}
	})
}
