#!/usr/bin/python3
"""A ROUTER test worker for streamed Server-Sent Events that go out one at
a time, when the test says so. By the request's path:
  .../events   streams a head (text/event-stream) and "data: 0\\n\\n" at
               once; every later event waits for a release
  .../next     a release: sends the next event ("data: <i>\\n\\n") on the
               open stream, and after the last (--count) ends the stream;
               answers 200 "sent <i>", or 409 when no stream is open
  .../page     the file --page, as text/html
  anything else  404
So a test that reads event i before it asks for event i+1 shows that every
event reached the client on its own, whatever filters lie between. Prints
"cancel <request-id>" for every cancel notice, flushed."""
import argparse

import zmq

from mzmq import meta_value, split


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("endpoint")
    ap.add_argument("--count", type=int, default=5, help="events per stream")
    ap.add_argument("--page", help="the HTML file .../page answers with")
    args = ap.parse_args()

    sock = zmq.Context().socket(zmq.ROUTER)
    sock.bind(args.endpoint)
    stream = None  # [envelope, request id, events sent] of the open stream
    while True:
        msg = sock.recv_multipart()
        req = split(msg)
        if req is None:
            continue
        env, method, target, _, meta, _ = req
        rid = meta_value(meta, b"request-id")
        if method == b"@cancel":
            print("cancel", rid.decode(), flush=True)
            if stream and stream[1] == rid:
                stream = None
            continue
        if method.startswith(b"@"):
            continue  # credits: a handful of small events never runs out
        path = target.split(b"?", 1)[0].rstrip(b"/")
        if path.endswith(b"/events"):
            if meta_value(meta, b"stream-credits") is None:
                sock.send_multipart(env + [b"500", b"this front cannot stream"])
                continue
            sock.send_multipart(env + [b"@stream", b"200", b"Content-Type: text/event-stream\r\nCache-Control: no-cache\r\n"])
            sock.send_multipart(env + [b"@data", b"data: 0\n\n"])
            stream = [env, rid, 1]
        elif path.endswith(b"/next"):
            if stream is None:
                sock.send_multipart(env + [b"409", b"no stream is open"])
                continue
            s_env, _, n = stream
            sock.send_multipart(s_env + [b"@data", b"data: %d\n\n" % n])
            stream[2] = n + 1
            if n + 1 == args.count:
                sock.send_multipart(s_env + [b"@end", b""])
                stream = None
            sock.send_multipart(env + [b"200", b"Content-Type: text/plain\r\n", b"sent %d" % n])
        elif path.endswith(b"/page") and args.page:
            with open(args.page, "rb") as f:
                sock.send_multipart(env + [b"200", b"Content-Type: text/html; charset=utf-8\r\n", f.read()])
        else:
            sock.send_multipart(env + [b"404", b"no such thing"])


if __name__ == "__main__":
    main()
