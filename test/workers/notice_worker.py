#!/usr/bin/python3
"""A ROUTER test worker for streams and cancel notices. By the request's
path: /hold is never answered; /abort streams a head, "partial", then
@abort; /trickle streams "tick" parts every 50 ms until cancelled; /poll
sends a keep-alive every 50 ms, ten times, then a plain 200 "news"
(long-poll); /refuse (a streamed body) grants 1000 bytes of credit and
answers 413 on the first part; anything else gets a plain 200. It prints "request <id> <target>" for every request
and "cancel <id>" for every cancel notice, flushed."""
import sys
import time

import zmq

from mzmq import meta_value, split


def main():
    sock = zmq.Context().socket(zmq.ROUTER)
    sock.bind(sys.argv[1])
    trickling = {}  # request id -> envelope
    polls = {}  # request id -> [envelope, keep-alives sent]
    refusing = {}  # request id -> envelope
    while True:
        if sock.poll(50 if trickling or polls else None):
            msg = sock.recv_multipart()
            req = split(msg)
            if req is None:
                continue
            env, method, target, _, meta, _ = req
            rid = meta_value(meta, b"request-id")
            if method == b"@body" or method == b"@body-end":
                if rid in refusing:
                    sock.send_multipart(refusing.pop(rid) + [b"413 Too Big", b"", b"no thanks"])
                continue
            if method == b"@cancel":
                trickling.pop(rid, None)
                print("cancel", rid.decode(), flush=True)
                continue
            if method.startswith(b"@"):
                continue
            print("request", rid.decode(), target.decode(), flush=True)
            if target.startswith(b"/n/hold"):
                continue
            if target.startswith(b"/n/abort"):
                sock.send_multipart(env + [b"@stream", b"200", b"Content-Type: text/plain\r\n"])
                sock.send_multipart(env + [b"@data", b"partial"])
                sock.send_multipart(env + [b"@abort", b"the test says so"])
                continue
            if target.startswith(b"/n/refuse"):
                refusing[rid] = env
                sock.send_multipart(env + [b"@credit", b"1000"])
                continue
            if target.startswith(b"/n/poll"):
                polls[rid] = [env, 0]
                continue
            if target.startswith(b"/n/trickle"):
                sock.send_multipart(env + [b"@stream", b"200", b"Content-Type: text/plain\r\n"])
                trickling[rid] = env
                continue
            sock.send_multipart(env + [b"200", b"plain"])
        for env in trickling.values():
            sock.send_multipart(env + [b"@data", b"tick\n"])
        for rid, p in list(polls.items()):
            if p[1] < 10:
                sock.send_multipart(p[0] + [b"@keep-alive", b""])
                p[1] += 1
            else:
                sock.send_multipart(p[0] + [b"200", b"news"])
                del polls[rid]
        time.sleep(0.05 if trickling or polls else 0)


if __name__ == "__main__":
    main()
