#!/usr/bin/python3
"""A ROUTER test worker for flow control and for keeping requests apart
(docs/PROTOCOL.md, "Streams, credits and cancel notices" and "WebSockets").
By the target of a WebSocket handshake:

  .../flood?count=C&size=S   accept, then send C binary messages of S bytes
                             as fast as the credit allows; message i starts
                             with i as 8 bytes big-endian, then the bytes
                             (i + j) % 251 for j from 8. Prints "flood CONN
                             MESSAGES BYTES" each time it runs out of credit
                             and when it has sent them all.
  .../overrun?size=S         as flood without an end, until it has had no
                             credit for half a second: then sends twice its
                             whole credit again in empty binary messages,
                             ignoring the credit, prints "overrun CONN
                             MESSAGES" and sends nothing more.
  anything else              echo every message with its type, within the
                             credit, and grant the credit back.

Every close it learns of prints "closed CONN CODE". A plain request to
.../mix/ID?n=N&group=G&of=K&pad=P is answered with a stream: the head at
once, then N events "data: ID SEQ xxx...\\n\\n" (P bytes of padding); the
events wait until K streams of group G have opened, then every open stream
gets one event in turn, within its credit, so that the parts of the streams
go out interleaved on the connection. Prints "stream ID PEER" (the ROUTER's
peer id in hex) as each opens. Every output line is flushed.

usage: ws_window_worker.py ENDPOINT
"""
import struct
import sys
import time
from urllib.parse import parse_qs

import zmq

from mzmq import meta_lines, say, split

PART_COST = 64
PATTERN = bytes(i % 251 for i in range(1 << 20)) * 2


def main():
    sock = zmq.Context().socket(zmq.ROUTER)
    sock.setsockopt(zmq.LINGER, 0)
    sock.setsockopt(zmq.SNDHWM, 0)  # an overrun must reach the front, not be dropped here
    sock.setsockopt(zmq.RCVHWM, 0)
    sock.bind(sys.argv[1])
    ws = {}  # request id -> state of an accepted WebSocket
    streams = {}  # request id -> state of an open stream
    waiting = {}  # group -> number of its streams opened

    def flood_message(i, size):
        head = struct.pack(">Q", i)
        off = i % 251
        return head + PATTERN[off + 8:off + size]

    def pump_ws(st):
        """Sends what the WebSocket's credit allows."""
        if st["mode"] in ("flood", "overrun"):
            size, sent = st["size"], False
            while st["credit"] >= size + PART_COST and not st["overran"] and \
                    (st["mode"] == "overrun" or st["n"] < st["count"]):
                sock.send_multipart(st["env"] + [b"@binary", flood_message(st["n"], size)])
                st["credit"] -= size + PART_COST
                st["n"] += 1
                st["bytes"] += size
                sent = True
            if sent:
                st["last"] = time.monotonic()
                say("flood", st["conn"], st["n"], st["bytes"])
        while st["out"] and st["out"][0][1] + PART_COST <= st["credit"]:
            kind, n, data = st["out"].pop(0)
            st["credit"] -= n + PART_COST
            sock.send_multipart(st["env"] + [kind, data])

    def pump_streams():
        """One event for each open stream whose group is complete."""
        sent = False
        for rid, s in list(streams.items()):
            if waiting.get(s["group"], 0) < s["of"]:
                continue
            if s["seq"] < s["n"]:
                ev = b"data: %s %d %s\n\n" % (s["id"], s["seq"], b"x" * s["pad"])
                if len(ev) + PART_COST > s["credit"]:
                    continue
                sock.send_multipart(s["env"] + [b"@data", ev])
                s["credit"] -= len(ev) + PART_COST
                s["seq"] += 1
                sent = True
            if s["seq"] == s["n"]:
                sock.send_multipart(s["env"] + [b"@end", b""])
                del streams[rid]
        return sent

    sent = False
    while True:
        sock.poll(0 if sent else 50)
        now = time.monotonic()
        for st in ws.values():
            if st["mode"] == "overrun" and not st["overran"] and now - st["last"] > 0.5:
                st["overran"] = True
                count = 2 * st["window"] // PART_COST
                for _ in range(count):
                    sock.send_multipart(st["env"] + [b"@binary", b""])
                say("overrun", st["conn"], count)
        while sock.poll(0):
            msg = sock.recv_multipart()
            req = split(msg)
            if req is None:
                continue
            env, method, target, _, meta, body = req
            m = meta_lines(meta)
            rid = m.get("request-id", b"")
            path, _, query = target.partition(b"?")
            q = {k: v[0] for k, v in parse_qs(query.decode()).items()}
            if m.get("websocket") == b"1":
                mode = "echo"
                if path.endswith(b"/flood"):
                    mode = "flood"
                elif path.endswith(b"/overrun"):
                    mode = "overrun"
                credit = int(m.get("stream-credits", b"0"))
                st = {"env": env, "conn": m.get("connection-id", b"?").decode(), "mode": mode,
                      "credit": credit, "window": credit, "out": [], "n": 0, "bytes": 0,
                      "count": int(q.get("count", "0")), "size": int(q.get("size", "1024")),
                      "overran": False, "last": time.monotonic()}
                ws[rid] = st
                sock.send_multipart(env + [b"@accept", b"X-Connection-Id: " + st["conn"].encode() + b"\r\n"])
                pump_ws(st)
                continue
            if method == b"@ws-close":
                st = ws.pop(rid, None)
                if st is not None:
                    say("closed", st["conn"], target.decode())
                continue
            if method == b"@credit":
                if rid in ws:
                    ws[rid]["credit"] += int(target)
                    pump_ws(ws[rid])
                elif rid in streams:
                    streams[rid]["credit"] += int(target)
                continue
            if method == b"@cancel":
                streams.pop(rid, None)
                continue
            if method in (b"@text", b"@binary"):
                st = ws.get(rid)
                if st is None:
                    continue
                if st["mode"] == "echo":
                    st["out"].append((method, len(body), body))
                    pump_ws(st)
                sock.send_multipart(env + [b"@credit", b"%d" % (len(body) + PART_COST)])
                continue
            if b"/mix/" in path and "stream-credits" in m:
                sid = path.rsplit(b"/", 1)[1]
                group = q.get("group", "")
                streams[rid] = {"env": env, "id": sid, "n": int(q.get("n", "10")), "seq": 0, "group": group,
                                "of": int(q.get("of", "1")), "pad": int(q.get("pad", "0")),
                                "credit": int(m["stream-credits"])}
                waiting[group] = waiting.get(group, 0) + 1
                say("stream", sid.decode(), env[0].hex())
                sock.send_multipart(env + [b"@stream", b"200", b"Content-Type: text/event-stream\r\n"])
                continue
            sock.send_multipart(env + [b"404", b"Content-Type: text/plain\r\n", b"no such thing"])
        sent = pump_streams()


if __name__ == "__main__":
    sys.exit(main())
