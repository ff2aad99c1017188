#!/usr/bin/python3
"""An MZMQ/1 worker behind the mod_zmq broker (zmq-gateway broker), speaking
the worker protocol MZMQW/1 of docs/PROTOCOL.md: it connects a DEALER to the
broker's backend, says READY, heartbeats every second whether idle or busy,
and reconnects when the broker goes quiet. Requests run in a second thread so
heartbeats keep flowing during long work.

    /usr/bin/python3 examples/python/broker_worker.py --connect tcp://127.0.0.1:5556
"""
import argparse
import hashlib
import json
import threading
import time

import zmq

VERSION = b"MZMQW/1"
HEARTBEAT = 1.0  # seconds
LIVENESS = 3     # missed heartbeats before the broker is presumed gone


def lines(frame):
    return [(n, v.strip()) for n, _, v in (l.partition(":") for l in frame.decode("latin-1").split("\r\n") if l)]


def handle(name, frames):
    """Turns the six request frames into reply frames."""
    proto, method, target, headers, meta, body = frames
    doc = {"worker": name, "method": method.decode(), "target": target.decode("latin-1"),
           "headers": lines(headers), "meta": dict(lines(meta)),
           "body_length": len(body), "body_sha256": hashlib.sha256(body).hexdigest()}
    return [b"200", b"Content-Type: application/json\r\n", json.dumps(doc).encode()]


def work(ctx, name, handler):
    """Runs requests from the inproc pipe, one at a time, in this thread."""
    pipe = ctx.socket(zmq.PAIR)
    pipe.connect("inproc://jobs")
    while True:
        msg = pipe.recv_multipart()
        i = msg.index(b"")
        pipe.send_multipart(msg[:i + 1] + handler(name, msg[i + 1:]))


def serve(broker, name, handler=handle):
    ctx = zmq.Context.instance()
    pipe = ctx.socket(zmq.PAIR)
    pipe.bind("inproc://jobs")
    threading.Thread(target=work, args=(ctx, name, handler), daemon=True).start()
    while True:  # one connection to the broker per pass
        sock = ctx.socket(zmq.DEALER)
        sock.linger = 0
        sock.connect(broker)
        sock.send_multipart([b"", VERSION, b"READY"])
        heard, beat = time.monotonic(), time.monotonic() + HEARTBEAT
        poller = zmq.Poller()
        poller.register(sock, zmq.POLLIN)
        poller.register(pipe, zmq.POLLIN)
        while time.monotonic() - heard < LIVENESS * HEARTBEAT:
            for s, _ in poller.poll(HEARTBEAT * 250):
                if s is pipe:  # a finished reply
                    sock.send_multipart(pipe.recv_multipart())
                    continue
                msg = sock.recv_multipart()
                heard = time.monotonic()
                if msg[0] == b"":  # control: ["", MZMQW/1, command]
                    if msg[2:] == [b"DISCONNECT"]:
                        heard = 0  # start over
                    continue
                pipe.send_multipart(msg)  # a request: [envelope..., "", six frames]
            if time.monotonic() >= beat:
                sock.send_multipart([b"", VERSION, b"HEARTBEAT"])
                beat = time.monotonic() + HEARTBEAT
        sock.close()  # the broker went quiet: reconnect
        time.sleep(0.2)


if __name__ == "__main__":
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--connect", default="tcp://127.0.0.1:5556", help="the broker's backend (default %(default)s)")
    ap.add_argument("--name", default="broker_worker.py")
    args = ap.parse_args()
    serve(args.connect, args.name)
