package bridge

import (
	"context"
	"errors"
	"strings"
	"testing"
	"time"

	zmq "github.com/pebbe/zmq4"
)

// curveWorker runs a libzmq ROUTER that is a CURVE server with secret and
// answers each request by its target: "ok" echoes the target, "frames"
// sends 10,000 empty frames after the status, "big" a 3 MiB body.
func curveWorker(t *testing.T, secret string) string {
	t.Helper()
	s, err := zmq.NewSocket(zmq.ROUTER)
	if err != nil {
		t.Fatal(err)
	}
	s.SetLinger(0)
	s.SetRcvtimeo(20 * time.Millisecond)
	if err := errors.Join(s.SetCurveServer(1), s.SetCurveSecretkey(secret)); err != nil {
		t.Fatal(err)
	}
	if err := s.Bind("tcp://127.0.0.1:*"); err != nil {
		t.Fatal(err)
	}
	ep, _ := s.GetLastEndpoint()
	quit, done := make(chan struct{}), make(chan struct{})
	go func() {
		defer close(done)
		defer s.Close()
		for {
			select {
			case <-quit:
				return
			default:
			}
			msg, err := s.RecvMessageBytes(0)
			if err != nil || len(msg) < 6 {
				continue
			}
			env, target := msg[:3], string(msg[5])
			reply := []any{env[0], env[1], env[2], "200"}
			switch {
			case strings.HasSuffix(target, "frames"):
				for range 10000 {
					reply = append(reply, "")
				}
			case strings.HasSuffix(target, "big"):
				reply = append(reply, "", make([]byte, 3<<20))
			default:
				reply = append(reply, target)
			}
			s.SendMessage(reply...)
		}
	}()
	t.Cleanup(func() { close(quit); <-done })
	return ep
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
