#!/usr/bin/python3
"""A ROUTER test worker that breaks streams on purpose, by the request's
path. /h/plain gets a plain 200 "fine"; /h/stranger-plain the same, after
an "@data" part with a made-up request id. Every other path streams a head
and "partial", then: /h/stall sends nothing more (the test kills the
worker); /h/kind sends a part of an unknown kind ("@bogus"); /h/frames a
part with 3 frames; /h/credit a part past the credit the request's
stream-credits granted; /h/stranger-stream sends parts with a made-up
request id before the head, after it and before the end, and ends the
stream correctly with "@end" "-done"; /h/late ends it with "@end" "-done"
and then sends one more part for it, "@data" "late". It prints "request <id> <target>"
for every request, flushed."""
import sys

import zmq

from mzmq import meta_value, split


def main():
    sock = zmq.Context().socket(zmq.ROUTER)
    sock.bind(sys.argv[1])
    while True:
        msg = sock.recv_multipart()
        req = split(msg)
        if req is None:
            continue
        env, method, target, _, meta, _ = req
        if method.startswith(b"@"):
            continue
        rid = meta_value(meta, b"request-id")
        print("request", rid.decode(), target.decode(), flush=True)
        # The same peer, another request id: a request the bridge never sent.
        stranger = env[:-2] + [b"no-such-request-" + rid, b""]
        if target in (b"/h/plain", b"/h/stranger-plain"):
            if target == b"/h/stranger-plain":
                sock.send_multipart(stranger + [b"@data", b"not yours"])
            sock.send_multipart(env + [b"200", b"Content-Type: text/plain\r\n", b"fine"])
            continue
        strangers = target == b"/h/stranger-stream"
        if strangers:
            sock.send_multipart(stranger + [b"@data", b"not yours"])
        sock.send_multipart(env + [b"@stream", b"200", b"Content-Type: text/plain\r\n"])
        if strangers:
            sock.send_multipart(stranger + [b"@data", b"not yours"])
        sock.send_multipart(env + [b"@data", b"partial"])
        if target == b"/h/kind":
            sock.send_multipart(env + [b"@bogus", b"x"])
        elif target == b"/h/frames":
            sock.send_multipart(env + [b"@data", b"one", b"two"])
        elif target == b"/h/credit":
            credit = int(meta_value(meta, b"stream-credits"))
            sock.send_multipart(env + [b"@data", b"x" * credit])
        elif strangers:
            sock.send_multipart(stranger + [b"@end", b"not yours"])
            sock.send_multipart(env + [b"@end", b"-done"])
        elif target == b"/h/late":
            sock.send_multipart(env + [b"@end", b"-done"])
            sock.send_multipart(env + [b"@data", b"late"])


if __name__ == "__main__":
    main()
