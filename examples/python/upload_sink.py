#!/usr/bin/python3
"""An MZMQ/1 worker for large transfers: binds a ROUTER; takes request bodies
in parts (a location with ZmqStreamBody on, route key stream_body: true),
asking for them with credit, and answers POST/PUT with JSON
{"bytes": N, "sha256": "..."} of what it received (a body sent whole gets
the same answer); answers GET ...?bytes=N with N bytes streamed in parts
(byte i is i % 251), paced by the credit it is given. It prints
"first-part <request-id>" when the first part of a streamed body arrives.
With --curve-secret it serves CurveZMQ (the front's ZmqCurve / curve keys).
Needs nothing but pyzmq (python3-zmq).

    /usr/bin/python3 examples/python/upload_sink.py tcp://127.0.0.1:5559
"""
import argparse
import hashlib
import json
import sys
from urllib.parse import parse_qs, urlsplit

import zmq
import zmq.auth

PART_COST = 64          # what each part costs beyond its bytes
WINDOW = 256 << 10      # the credit an upload starts with
PART = 63 << 10         # download parts: each message fits a 64 KiB TCP segment (docs/PROTOCOL.md)
PATTERN = bytes(range(251)) * ((PART // 251) + 2)


def meta_value(meta, name):
    for line in meta.split(b"\r\n"):
        key, sep, value = line.partition(b":")
        if sep and key == name:
            return value.strip()
    return None


def answer(sock, envelope, n, digest):
    body = json.dumps({"bytes": n, "sha256": digest}).encode()
    sock.send_multipart(envelope + [b"200", b"Content-Type: application/json\r\n", body])


class Upload:
    def __init__(self, envelope):
        self.envelope, self.hash, self.bytes, self.used, self.parts = envelope, hashlib.sha256(), 0, 0, 0


class Download:
    def __init__(self, envelope, total, credit):
        self.envelope, self.total, self.sent, self.credit = envelope, total, 0, credit

    def step(self, sock):
        """Sends what the credit allows; True when the stream is done."""
        while self.sent < self.total:
            n = min(PART, self.total - self.sent)
            if self.credit < n + PART_COST:
                return False
            o = self.sent % 251
            sock.send_multipart(self.envelope + [b"@data", PATTERN[o:o + n]])
            self.credit -= n + PART_COST
            self.sent += n
        if self.credit < PART_COST:
            return False
        sock.send_multipart(self.envelope + [b"@end", b""])
        return True


def main():
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("endpoint", help="endpoint to bind, e.g. tcp://127.0.0.1:5559")
    ap.add_argument("--curve-secret", help="serve CurveZMQ with this secret certificate (zmq-gateway keygen)")
    args = ap.parse_args()

    sock = zmq.Context().socket(zmq.ROUTER)
    sock.setsockopt(zmq.SNDHWM, 0)  # a download's parts are paced by credit, not dropped
    if args.curve_secret:
        sock.curve_publickey, sock.curve_secretkey = zmq.auth.load_certificate(args.curve_secret)
        sock.curve_server = True
    sock.bind(args.endpoint)
    uploads, downloads = {}, {}
    while True:
        msg = sock.recv_multipart()
        i = msg.index(b"")
        envelope, frames = msg[: i + 1], msg[i + 1:]
        if len(frames) != 6 or frames[0] != b"MZMQ/1":
            continue
        _, method, target, _, meta, body = frames
        rid = meta_value(meta, b"request-id")
        if method in (b"@body", b"@body-end"):
            up = uploads.get(rid)
            if up is None:
                continue
            if up.parts == 0:
                print("first-part", rid.decode(), flush=True)
            up.parts += 1
            up.hash.update(body)
            up.bytes += len(body)
            up.used += len(body) + PART_COST
            if method == b"@body-end":
                del uploads[rid]
                answer(sock, up.envelope, up.bytes, up.hash.hexdigest())
            elif up.used >= WINDOW // 4:
                sock.send_multipart(up.envelope + [b"@credit", b"%d" % up.used])
                up.used = 0
            continue
        if method == b"@credit":
            down = downloads.get(rid)
            if down is not None:
                down.credit += int(target)
                if down.step(sock):
                    del downloads[rid]
            continue
        if method == b"@cancel":
            uploads.pop(rid, None)
            downloads.pop(rid, None)
            continue
        if method.startswith(b"@"):
            continue
        if meta_value(meta, b"stream-body") == b"1":
            uploads[rid] = Upload(envelope)
            sock.send_multipart(envelope + [b"@credit", b"%d" % WINDOW])
            continue
        query = parse_qs(urlsplit(target.decode("latin-1")).query)
        if method in (b"GET", b"HEAD") and "bytes" in query:
            total = int(query["bytes"][0])
            credits = meta_value(meta, b"stream-credits")
            if credits is None:
                data = (PATTERN * (total // len(PATTERN) + 1))[:total] if total else b""
                sock.send_multipart(envelope + [b"200", b"Content-Type: application/octet-stream\r\n", data])
                continue
            sock.send_multipart(envelope + [b"@stream", b"200", b"Content-Type: application/octet-stream\r\n"])
            down = Download(envelope, total, int(credits))
            if not down.step(sock):
                downloads[rid] = down
            continue
        answer(sock, envelope, len(body), hashlib.sha256(body).hexdigest())


if __name__ == "__main__":
    try:
        main()
    except KeyboardInterrupt:
        sys.exit(0)
