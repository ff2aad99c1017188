package bridge

import (
	"bufio"
	"context"
	"crypto/rand"
	"errors"
	"io"
	"net"
	"os"
	"strings"
	"syscall"
	"testing"
	"time"

	"golang.org/x/crypto/nacl/box"
)

// curveWorker runs a libzmq ROUTER that is a CURVE server with secret and
// answers each request by its target: "ok" echoes the target, "frames"
// sends 10,000 empty frames after the status, "big" a 3 MiB body.
func curveWorker(t *testing.T, secret string) string {
	t.Helper()
	addr, stop := curveServe(t, secret, nil, func(msg [][]byte) [][]byte {
		if len(msg) < 6 {
			return nil
		}
		reply, target := append(msg[:3:3], []byte("200")), string(msg[5])
		switch {
		case strings.HasSuffix(target, "frames"):
			reply = append(reply, make([][]byte, 10000)...)
		case strings.HasSuffix(target, "big"):
			reply = append(reply, nil, make([]byte, 3<<20))
		default:
			reply = append(reply, msg[5])
		}
		return reply
	})
	t.Cleanup(stop)
	return "tcp://" + addr
}

// The ZMTP transport speaks CurveZMQ to libzmq workers, watches them over
// CURVE, and bounds their replies by the reader's rules.
func TestClientCurve(t *testing.T) {
	serverPublic, serverSecret := curveKeys(t)
	public, secret := curveKeys(t)
	ep := curveWorker(t, serverSecret)
	c := newTestClient(t, Options{Endpoints: []string{ep}, MaxReply: 1 << 20,
		Curve: &Curve{ServerKey: serverPublic, PublicKey: public, SecretKey: secret}})
	for range 3 {
		resp, err := c.Do(context.Background(), &Request{Method: []byte("GET"), Target: []byte("/ok")}, 5*time.Second)
		if err != nil || resp.Status != 200 || string(resp.Body) != "/ok" {
			t.Fatalf("over CURVE: %d %q %v", resp.Status, resp.Body, err)
		}
	}
	if st := c.Status()[0]; st.State != StateUp || st.Stats.Connected.Load() < 1 {
		t.Errorf("the watch over CURVE: state %v, connected %d", st.State, st.Stats.Connected.Load())
	}
	for target, want := range map[string]error{"/frames": ErrReplyFrames, "/big": ErrReplyTooLarge} {
		_, err := c.Do(context.Background(), &Request{Method: []byte("GET"), Target: []byte(target)}, 5*time.Second)
		if !errors.Is(err, ErrProtocol) || !errors.Is(err, want) {
			t.Errorf("%s: %v, want ErrProtocol and %v", target, err, want)
		}
	}
	if resp, err := c.Do(context.Background(), &Request{Method: []byte("GET"), Target: []byte("/ok")}, 5*time.Second); err != nil || resp.Status != 200 {
		t.Errorf("after the refused replies: %v", err)
	}

	// A wrong worker key: the handshake fails, the watch says so, and a
	// request finds no worker.
	otherPublic, _ := curveKeys(t)
	wrong := newTestClient(t, Options{Endpoints: []string{ep}, ConnectTimeout: 300 * time.Millisecond,
		Curve: &Curve{ServerKey: otherPublic, PublicKey: public, SecretKey: secret}})
	if _, err := wrong.Do(context.Background(), &Request{Method: []byte("GET")}, 2*time.Second); !errors.Is(err, ErrNoWorker) {
		t.Errorf("wrong worker key: %v, want ErrNoWorker", err)
	}
	if st := wrong.Status()[0]; st.State == StateUp || st.Stats.HandshakeFailed.Load() < 1 {
		t.Errorf("wrong worker key: state %v, handshake failures %d", st.State, st.Stats.HandshakeFailed.Load())
	}
}

// A CurveZMQ peer that, once the handshake is done, sends sealed frames
// with MORE set for ever (what no libzmq worker can send, and libzmq would
// buffer without bound): the reader refuses the reply by the same rules as
// on a NULL connection, from what it has opened, and stops reading.
func TestZMTPCurveReaderBounds(t *testing.T) {
	for _, tc := range []struct {
		name  string
		frame []byte
		want  error
	}{{"empty frames", nil, ErrReplyFrames}, {"600 KiB frames", make([]byte, 600<<10), ErrReplyTooLarge}} {
		t.Run(tc.name, func(t *testing.T) {
			fds, err := syscall.Socketpair(syscall.AF_UNIX, syscall.SOCK_STREAM|syscall.SOCK_CLOEXEC, 0)
			if err != nil {
				t.Fatal(err)
			}
			conn := func(fd int) net.Conn {
				f := os.NewFile(uintptr(fd), "curve")
				defer f.Close()
				nc, err := net.FileConn(f)
				if err != nil {
					t.Fatal(err)
				}
				return nc
			}
			client, peer := conn(fds[0]), conn(fds[1])
			defer peer.Close()
			s := newCurveTestServer(t)
			pub, sec, _ := box.GenerateKey(rand.Reader)
			sent := make(chan int64, 1)
			go func() {
				w := &curveWire{nc: peer, br: bufio.NewReader(peer)}
				g := make([]byte, 64)
				io.ReadFull(w.br, g)
				_, hello, _ := w.read()
				peer.Write(curveServerGreeting())
				w.write(4, s.welcome(t, hello))
				_, initiate, _ := w.read()
				_, _, ready := s.ready(t, initiate, curveTestReadyMeta)
				w.write(4, ready)
				var n int64
				w.write(0, s.seal(curveFlagMore, []byte("id")))
				for n < 1<<30 {
					if err := w.write(0, s.seal(curveFlagMore, tc.frame)); err != nil {
						break
					}
					n += int64(len(tc.frame)) + curveMessageOverhead
				}
				sent <- n
			}()
			c := &zmtpConn{maxMsgSize: 1 << 20, keys: &Curve{ServerKey: string(s.public[:]), PublicKey: string(pub[:]), SecretKey: string(sec[:])}}
			if err := c.attach(client, time.Now().Add(5*time.Second)); err != nil {
				t.Fatal(err)
			}
			_, err = c.Recv(10 * time.Second)
			if !errors.Is(err, ErrProtocol) || !errors.Is(err, tc.want) {
				t.Errorf("endless frames: %v, want ErrProtocol and %v", err, tc.want)
			}
			c.Close()
			if n := <-sent; n > 64<<20 {
				t.Errorf("the peer could send %d MiB before the reader gave up", n>>20)
			}
			if len(c.buf) > 4<<20 || cap(c.plain) > 4<<20 {
				t.Errorf("buffers grew to %d and %d bytes", len(c.buf), cap(c.plain))
			}
		})
	}
}

// curveServerGreeting is a CURVE server's ZMTP 3.1 greeting.
func curveServerGreeting() []byte {
	g := append([]byte(nil), curveGreeting...)
	g[32] = 1 // as-server
	return g
}
