#!/usr/bin/python3
"""A ROUTER test worker that answers a streamed request body early
(docs/PROTOCOL.md, "Streamed request bodies"). A request with a streamed
body (meta "stream-body: 1") is granted --credit bytes; on its first part
the worker answers 413 "no thanks", and then, as a worker whose grants race
with its answer would, grants back what every part it gets costs (its bytes
and 64), the first one too. A front that stops relaying once it has the
answer never uses those grants: all it sends costs no more than --credit.
Any other request gets 200 "plain". It prints, flushed:

  request <id> <target> <credit>      a request with a streamed body
  answered <id>                       after sending the 413
  part <id> <method> <bytes> <after>  every @body / @body-end part; after is
                                      1 when the answer was already sent
  cancel <id>                         a cancel notice

usage: early_answer_worker.py ENDPOINT [--credit N]
"""
import argparse

import zmq

from mzmq import meta_value, split

PART_COST = 64


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("endpoint")
    ap.add_argument("--credit", type=int, default=512 << 10, help="the credit a streamed body starts with")
    args = ap.parse_args()
    sock = zmq.Context().socket(zmq.ROUTER)
    sock.setsockopt(zmq.LINGER, 0)
    sock.bind(args.endpoint)
    answered = set()  # request ids answered
    while True:
        msg = sock.recv_multipart()
        req = split(msg)
        if req is None:
            continue
        env, method, target, _, meta, body = req
        rid = (meta_value(meta, b"request-id") or b"?").decode()
        if method in (b"@body", b"@body-end"):
            after = 1 if rid in answered else 0
            print("part", rid, method.decode(), len(body), after, flush=True)
            if not after:
                sock.send_multipart(env + [b"413 Too Big", b"Content-Type: text/plain\r\n", b"no thanks"])
                answered.add(rid)
                print("answered", rid, flush=True)
            sock.send_multipart(env + [b"@credit", b"%d" % (len(body) + PART_COST)])
            continue
        if method == b"@cancel":
            print("cancel", rid, flush=True)
            continue
        if method.startswith(b"@"):
            continue
        if meta_value(meta, b"stream-body") == b"1":
            print("request", rid, target.decode(), args.credit, flush=True)
            sock.send_multipart(env + [b"@credit", b"%d" % args.credit])
            continue
        sock.send_multipart(env + [b"200", b"Content-Type: text/plain\r\n", b"plain"])


if __name__ == "__main__":
    main()
