#!/usr/bin/python3
"""MZMQ/1 worker for the integration tests, REP or ROUTER (--router).

It behaves according to the last segment of the request path:
  .../raw          the request body back, raw
  .../blob?n=N     N deterministic bytes (i % 251)
  .../cookies      two Set-Cookie headers in order, plus hop-by-hop headers
                   the bridge must drop
  .../sleep?ms=N   answers after N milliseconds
  .../status?code=N  that status with a short body
  .../bad4         four frames (breaks MZMQ/1)
  .../badstatus    status "abc"
  .../badheader    a header value with CR LF inside
  .../manyframes   a status and 100,000 empty frames (breaks MZMQ/1)
  .../bigframes    a status and 40 frames of 64 KiB (breaks MZMQ/1, and is
                   over any reply limit under 2.5 MiB)
  anything else    JSON describing the request (as examples/python/echo.py)
"""
import argparse
import hashlib
import json
import sys
import time
from urllib.parse import parse_qs, urlsplit

import zmq
import zmq.auth


def lines(frame):
    pairs = []
    for line in frame.decode("latin-1").split("\r\n"):
        if line:
            name, _, value = line.partition(":")
            pairs.append((name, value.strip()))
    return pairs


def answer(name, frames):
    proto, method, target, headers, meta, body = frames
    url = urlsplit(target.decode("latin-1"))
    query = parse_qs(url.query)
    last = url.path.rstrip("/").rsplit("/", 1)[-1]
    if last == "raw":
        return [b"200", b"Content-Type: application/octet-stream\r\n", body]
    if last == "blob":
        n = int(query.get("n", ["0"])[0])
        return [b"200", b"", bytes(i % 251 for i in range(n))]
    if last == "cookies":
        return [b"201 Made", b"Set-Cookie: a=1\r\nX-Order: first\r\nConnection: close\r\n"
                b"Transfer-Encoding: chunked\r\nKeep-Alive: timeout=5\r\nSet-Cookie: b=2\r\n"
                b"Proxy-Thing: x\r\nContent-Length: 999\r\nX-Order: second\r\n", b"cookies"]
    if last == "sleep":
        time.sleep(int(query.get("ms", ["0"])[0]) / 1000)
    if last == "status":
        return [query.get("code", ["200"])[0].encode(), b"status body"]
    if last == "bad4":
        return [b"200", b"", b"body", b"extra"]
    if last == "badstatus":
        return [b"abc", b"body"]
    if last == "manyframes":
        return [b"200"] + [b""] * 100000
    if last == "bigframes":
        return [b"200"] + [bytes(65536)] * 40
    if last == "badheader":
        return [b"200", b"X-Evil: a\r\nInjected: yes\rstill\r\n", b"body"]
    doc = {
        "worker": name,
        "protocol": proto.decode(),
        "method": method.decode(),
        "target": target.decode("latin-1"),
        "headers": lines(headers),
        "meta": dict(lines(meta)),
        "body_length": len(body),
        "body_sha256": hashlib.sha256(body).hexdigest(),
    }
    return [b"200", b"Content-Type: application/json\r\n", json.dumps(doc).encode()]


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--bind", help="endpoint to bind (REP or ROUTER)")
    ap.add_argument("--name", default="py")
    ap.add_argument("--router", action="store_true")
    ap.add_argument("--log", action="store_true", help="print each request's target")
    ap.add_argument("--broker", help="connect to this broker backend (MZMQW/1) instead of binding")
    ap.add_argument("--curve-secret", help="run as a CURVE server with this secret certificate")
    ap.add_argument("--heartbeat", type=int, help="send ZMTP PINGs every this many ms and drop peers silent for 3 times as long")
    ap.add_argument("--curve-allow", help="with --curve-secret: accept only clients whose public certificates are in this directory")
    args = ap.parse_args()

    if args.broker:
        import os
        sys.path.insert(0, os.path.join(os.path.dirname(__file__), "../../examples/python"))
        from broker_worker import serve
        def handler(name, frames):
            if args.log:
                print("got", frames[2].decode("latin-1"), flush=True)
            return answer(name, frames)
        print("ready", flush=True)
        serve(args.broker, args.name, handler=handler)
        return

    ctx = zmq.Context()
    sock = ctx.socket(zmq.ROUTER if args.router else zmq.REP)
    if args.curve_secret:

        if args.curve_allow:
            from zmq.auth.thread import ThreadAuthenticator
            auth = ThreadAuthenticator(ctx)
            auth.start()
            auth.configure_curve(domain="*", location=args.curve_allow)
        sock.curve_publickey, sock.curve_secretkey = zmq.auth.load_certificate(args.curve_secret)
        sock.curve_server = True
    if args.heartbeat:
        sock.heartbeat_ivl = args.heartbeat
        sock.heartbeat_timeout = 3 * args.heartbeat
    sock.bind(args.bind)
    if args.bind.startswith("ipc://"):
        import os
        os.chmod(args.bind[len("ipc://"):], 0o777)  # Apache's children run as another user
    print("ready", flush=True)
    while True:
        msg = sock.recv_multipart()
        envelope = []
        if args.router:
            # Everything up to and including the first empty frame.
            i = msg.index(b"")
            envelope, msg = msg[:i + 1], msg[i + 1:]
        if len(msg) != 6 or msg[0] != b"MZMQ/1":
            print("unexpected request: %r" % msg[:2], file=sys.stderr, flush=True)
            continue
        if args.log:
            print("got", msg[2].decode("latin-1"), flush=True)
        sock.send_multipart(envelope + answer(args.name, msg))


if __name__ == "__main__":
    main()
