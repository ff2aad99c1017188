#!/usr/bin/python3
"""A ROUTER test worker that runs past its credit with few but large
messages (docs/PROTOCOL.md, "Streams, credits and cancel notices" and
"WebSockets"). By the target:

  .../overrun?count=C&size=S&part=P   a WebSocket handshake: accept, then
        send binary messages of P bytes as fast as the credit allows until
        no credit has come for half a second (the client reads nothing):
        print "stalled CONN", and a second later send C binary messages
        of S bytes at once, ignoring the credit, print "overrun CONN C",
        and send nothing more.
  .../overrun/ID?count=C&size=S&part=P   a plain request that may be
        streamed: the head, then @data parts of P bytes within the credit
        until none has come for half a second ("stalled ID"), and a second
        later C @data parts of S bytes at once, ignoring the credit;
        prints "overrun ID C".
  .../events/ID?n=N   a plain request that may be streamed: the head and N
        events "data: ID SEQ\\n\\n" within the credit, then @end.
  anything else       a WebSocket handshake: echo every message with its
        type, within the credit, and grant the credit back.

Every close it learns of prints "closed CONN CODE". Every output line is
flushed.

usage: big_overrun_worker.py ENDPOINT
"""
import sys
import time
from urllib.parse import parse_qs

import zmq

from mzmq import meta_lines, say, split

PART_COST = 64


def main():
    sock = zmq.Context().socket(zmq.ROUTER)
    sock.setsockopt(zmq.LINGER, 0)
    sock.setsockopt(zmq.SNDHWM, 0)  # an overrun must reach the front, not be dropped here
    sock.setsockopt(zmq.RCVHWM, 0)
    sock.bind(sys.argv[1])
    held = {}  # request id -> state of an open WebSocket or stream

    def pump(st):
        """Sends what the credit allows."""
        if st["mode"] == "overrun" and not st["overran"]:
            part = st["part"]
            while st["credit"] >= part + PART_COST:
                sock.send_multipart(st["env"] + [st["kind"], b"p" * part])
                st["credit"] -= part + PART_COST
                st["last"] = time.monotonic()
        elif st["mode"] == "events":
            while st["seq"] < st["n"]:
                ev = b"data: %s %d\n\n" % (st["id"], st["seq"])
                if len(ev) + PART_COST > st["credit"]:
                    return
                sock.send_multipart(st["env"] + [b"@data", ev])
                st["credit"] -= len(ev) + PART_COST
                st["seq"] += 1
            sock.send_multipart(st["env"] + [b"@end", b""])
            st["mode"] = "done"
        while st["out"] and st["out"][0][1] + PART_COST <= st["credit"]:
            kind, n, data = st["out"].pop(0)
            st["credit"] -= n + PART_COST
            sock.send_multipart(st["env"] + [kind, data])

    def overrun(st):
        big = b"x" * st["size"]
        for _ in range(st["count"]):
            sock.send_multipart(st["env"] + [st["kind"], big], copy=False)
        st["overran"] = True
        say("overrun", st["name"], st["count"])

    while True:
        sock.poll(50)
        now = time.monotonic()
        for st in list(held.values()):
            if st["mode"] != "overrun" or st["overran"]:
                continue
            if st["stalled"] is None and now - st["last"] > 0.5:
                st["stalled"] = now
                say("stalled", st["name"])
            elif st["stalled"] is not None and now - st["stalled"] > 1.0:
                overrun(st)
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
            if method == b"@credit":
                if rid in held:
                    held[rid]["credit"] += int(target)
                    held[rid]["last"] = time.monotonic()
                    pump(held[rid])
                continue
            if method == b"@ws-close":
                st = held.pop(rid, None)
                if st is not None:
                    say("closed", st["name"], target.decode())
                continue
            if method == b"@cancel":
                held.pop(rid, None)
                continue
            if method in (b"@text", b"@binary"):
                st = held.get(rid)
                if st is None:
                    continue
                if st["mode"] == "echo":
                    st["out"].append((method, len(body), body))
                    pump(st)
                sock.send_multipart(env + [b"@credit", b"%d" % (len(body) + PART_COST)])
                continue
            st = {"env": env, "credit": int(m.get("stream-credits", b"0")), "out": [], "overran": False, "stalled": None,
                  "last": time.monotonic(), "count": int(q.get("count", "0")), "size": int(q.get("size", "0")),
                  "part": int(q.get("part", "16384")), "n": int(q.get("n", "0")), "seq": 0}
            if m.get("websocket") == b"1":
                st.update(name=m.get("connection-id", b"?").decode(), kind=b"@binary",
                          mode="overrun" if path.endswith(b"/overrun") else "echo")
                held[rid] = st
                sock.send_multipart(env + [b"@accept", b"X-Connection-Id: " + st["name"].encode() + b"\r\n"])
                pump(st)
                continue
            if "stream-credits" in m and (b"/overrun/" in path or b"/events/" in path):
                name = path.rsplit(b"/", 1)[1]
                st.update(name=name.decode(), id=name, kind=b"@data",
                          mode="overrun" if b"/overrun/" in path else "events")
                held[rid] = st
                sock.send_multipart(env + [b"@stream", b"200", b"Content-Type: application/octet-stream\r\n"])
                pump(st)
                continue
            sock.send_multipart(env + [b"404", b"Content-Type: text/plain\r\n", b"no such thing"])


if __name__ == "__main__":
    sys.exit(main())
