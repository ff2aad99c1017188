#!/usr/bin/python3
"""An MZMQ/1 worker with a REP socket: answers every request with JSON
describing what it received (method, target, headers, meta, body length and
SHA-256). Needs nothing but pyzmq (Debian: python3-zmq).

    /usr/bin/python3 examples/python/echo.py --bind tcp://127.0.0.1:5555
"""
import argparse
import hashlib
import json

import zmq


def lines(frame):
    """Splits "Name: value\\r\\n" lines into (name, value) pairs."""
    pairs = []
    for line in frame.decode("latin-1").split("\r\n"):
        if line:
            name, _, value = line.partition(":")
            pairs.append((name, value.strip()))
    return pairs


def main():
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--bind", default="tcp://127.0.0.1:5555", help="endpoint to bind (default %(default)s)")
    ap.add_argument("--name", default="echo.py", help="worker name reported in replies")
    args = ap.parse_args()

    sock = zmq.Context().socket(zmq.REP)
    sock.bind(args.bind)
    while True:
        proto, method, target, headers, meta, body = sock.recv_multipart()
        answer = {
            "worker": args.name,
            "protocol": proto.decode(),
            "method": method.decode(),
            "target": target.decode("latin-1"),
            "headers": lines(headers),
            "meta": dict(lines(meta)),
            "body_length": len(body),
            "body_sha256": hashlib.sha256(body).hexdigest(),
        }
        sock.send_multipart([b"200", b"Content-Type: application/json\r\n",
                             json.dumps(answer, indent=1).encode() + b"\n"])


if __name__ == "__main__":
    main()
