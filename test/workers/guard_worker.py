#!/usr/bin/python3
"""A ROUTER test worker for the guards around streams: ZmqMaxStreams,
ZmqStreamIdleTimeout, cancels. It binds every endpoint given on the command
line to one ROUTER socket and prints one line for every message it gets,
flushed:

    msg <method> <request-id> <target> notices=<0|1> credits=<0|1>

(notices=1 when the meta says "notices: cancel", credits=1 when it has
"stream-credits"). By the last segment of the request's path:

  plain       a plain 200 "plain" (also any path not below)
  hold        never answered
  stall       a head, the part "partial", then nothing
  trickle     a head, then "tick\\n" every 100 ms until cancelled
  release     ends the held stream (stall or trickle) whose query is the
              same as this request's with "@end" "bye", and answers 200
              "released" (404 "unknown" when there is none)
  poll        a keep-alive at once and every 100 ms, n in all (query n=,
              default 15), then a plain 200 "news" (long-poll)
  streampoll  a head, then a keep-alive every 100 ms, n times, then
              "@end" "news"

A stream held here stops at a cancel notice."""
import sys
import time
from urllib.parse import urlsplit, parse_qs

import zmq

from mzmq import meta_value, split

TICK = 0.1  # seconds between a trickle's parts, and between a poll's keep-alives


def main():
    sock = zmq.Context().socket(zmq.ROUTER)
    for ep in reversed(sys.argv[1:]):  # the first last: once it listens, all do
        sock.bind(ep)
    held = {}  # request id -> (envelope, query) of a stall or trickle stream
    trickling = set()  # request ids
    polls = {}  # request id -> [envelope, keep-alives left, streamed]
    due = 0.0  # when the next periodic parts are due
    while True:
        wait = None
        if trickling or polls:
            wait = max(0, (due - time.monotonic()) * 1000)
        if sock.poll(wait):
            if not (trickling or polls):
                due = time.monotonic() + TICK  # the first periodic parts come a tick after this message
            msg = sock.recv_multipart()
            req = split(msg)
            if req is None:
                continue
            env, method, target, _, meta, _ = req
            rid = meta_value(meta, b"request-id") or b"-"
            notices = meta_value(meta, b"notices") == b"cancel"
            credits = meta_value(meta, b"stream-credits") is not None
            print("msg %s %s %s notices=%d credits=%d" % (method.decode(), rid.decode(), target.decode() or "-",
                                                         notices, credits), flush=True)
            if method == b"@cancel":
                held.pop(rid, None)
                trickling.discard(rid)
                polls.pop(rid, None)
                continue
            if method.startswith(b"@"):
                continue
            url = urlsplit(target.decode())
            what = url.path.rsplit("/", 1)[-1]
            if what == "hold":
                continue
            if what in ("stall", "trickle"):
                sock.send_multipart(env + [b"@stream", b"200", b"Content-Type: text/plain\r\n"])
                if what == "stall":
                    sock.send_multipart(env + [b"@data", b"partial"])
                else:
                    trickling.add(rid)
                held[rid] = (env, url.query)
                continue
            if what == "release":
                for hid, (henv, query) in list(held.items()):
                    if query == url.query:
                        sock.send_multipart(henv + [b"@end", b"bye"])
                        del held[hid]
                        trickling.discard(hid)
                        sock.send_multipart(env + [b"200", b"released"])
                        break
                else:
                    sock.send_multipart(env + [b"404", b"unknown"])
                continue
            if what in ("poll", "streampoll"):
                n = int(parse_qs(url.query).get("n", ["15"])[0])
                if what == "streampoll":
                    sock.send_multipart(env + [b"@stream", b"200", b"Content-Type: text/plain\r\n"])
                else:
                    sock.send_multipart(env + [b"@keep-alive", b""])
                    n -= 1
                polls[rid] = [env, n, what == "streampoll"]
                continue
            sock.send_multipart(env + [b"200", b"plain"])
        if time.monotonic() < due:
            continue
        due = max(due + TICK, time.monotonic())
        for rid in trickling:
            sock.send_multipart(held[rid][0] + [b"@data", b"tick\n"])
        for rid, p in list(polls.items()):
            if p[1] > 0:
                sock.send_multipart(p[0] + [b"@keep-alive", b""])
                p[1] -= 1
            elif p[2]:
                sock.send_multipart(p[0] + [b"@end", b"news"])
                del polls[rid]
            else:
                sock.send_multipart(p[0] + [b"200", b"news"])
                del polls[rid]


if __name__ == "__main__":
    try:
        main()
    except KeyboardInterrupt:
        sys.exit(0)
