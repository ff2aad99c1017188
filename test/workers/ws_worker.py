#!/usr/bin/env python3
"""A WebSocket test worker (docs/PROTOCOL.md, "WebSockets"): a ROUTER that
accepts every handshake and echoes each message with its type, counting
credits both ways. A text message "close" closes with 4000 "bye", a text
message "garbage" is answered with text that is not UTF-8 (which breaks the
protocol); the target picks other behaviours:

  .../refuse    refuse the handshake with 403 and a body
  .../badproto  accept, choosing a subprotocol nobody offered (the front: 502)
  .../hello     accept, then send "hello" at once
  .../slow      accept, then take messages without echoing them or granting
                credit back (a worker that cannot keep up)

An offered subprotocol is chosen (the first). Prints "closed CONNECTION-ID
CODE" for every close it learns of, "message CONNECTION-ID KIND LENGTH" for
every message, flushed.

usage: ws_worker.py ENDPOINT [--curve-secret CERT]
"""
import argparse
import sys

import zmq

from mzmq import meta_lines, split
import zmq.auth


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("endpoint")
    ap.add_argument("--curve-secret", help="run as a CURVE server with this secret certificate")
    args = ap.parse_args()
    sock = zmq.Context().socket(zmq.ROUTER)
    sock.setsockopt(zmq.LINGER, 0)
    if args.curve_secret:
        sock.curve_publickey, sock.curve_secretkey = zmq.auth.load_certificate(args.curve_secret)
        sock.curve_server = True
    sock.bind(args.endpoint)
    conns = {}  # request id -> state

    def send(st, kind, data):
        """Sends a message within the credit, or queues it."""
        st["out"].append((kind, data))
        flush(st)

    def flush(st):
        while st["out"]:
            kind, data = st["out"][0]
            cost = len(data) + 64
            if cost > st["credit"]:
                return
            st["out"].pop(0)
            st["credit"] -= cost
            sock.send_multipart(st["env"] + [kind, data])

    while True:
        msg = sock.recv_multipart()
        req = split(msg)
        if req is None:
            continue
        env, method, target, headers, meta, body = req
        m = meta_lines(meta)
        rid = m.get("request-id", b"").decode()
        if m.get("websocket") == b"1":
            path = target.split(b"?")[0]
            if path.endswith(b"/refuse"):
                sock.send_multipart(env + [b"403", b"Content-Type: text/plain\r\n", b"not here"])
                continue
            lines = b""
            offered = m.get("websocket-protocols")
            if offered:
                lines += b"Sec-WebSocket-Protocol: " + offered.split(b",")[0].strip() + b"\r\n"
            if path.endswith(b"/badproto"):
                lines = b"Sec-WebSocket-Protocol: nonsense\r\n"
            lines += b"X-Worker: ws\r\nX-Connection-Id: " + m.get("connection-id", b"?") + b"\r\n"
            st = {"env": env, "conn": m.get("connection-id", b"?").decode(), "out": [],
                  "credit": int(m.get("stream-credits", b"0")), "path": path}
            conns[rid] = st
            sock.send_multipart(env + [b"@accept", lines])
            if path.endswith(b"/hello"):
                send(st, b"@text", b"hello")
            continue
        st = conns.get(rid)
        if method == b"@ws-close":
            if st is not None:
                print("closed", st["conn"], target.decode(), flush=True)
                del conns[rid]
            continue
        if method == b"@credit":
            if st is not None:
                st["credit"] += int(target)
                flush(st)
            continue
        if method in (b"@text", b"@binary"):
            if st is None:
                continue
            print("message", st["conn"], method.decode()[1:], len(body), flush=True)
            if st["path"].endswith(b"/slow"):
                continue
            if method == b"@text" and body == b"garbage":
                sock.send_multipart(env + [b"@text", b"\xff\xfe not UTF-8"])
                continue
            if method == b"@text" and body == b"close":
                sock.send_multipart(env + [b"@ws-close", b"4000", b"bye"])
                print("closed", st["conn"], "4000", flush=True)
                del conns[rid]
                continue
            send(st, method, body)
            sock.send_multipart(env + [b"@credit", b"%d" % (len(body) + 64)])
            continue
        # A plain request.
        sock.send_multipart(env + [b"200", b"Content-Type: text/plain\r\n", b"plain"])


if __name__ == "__main__":
    sys.exit(main())
