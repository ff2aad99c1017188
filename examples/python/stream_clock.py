#!/usr/bin/python3
"""An MZMQ/1 worker that streams Server-Sent Events: binds a ROUTER and
answers every request with Content-Type: text/event-stream and N events
("data: <i>\\n\\n"), one every interval, then ends the stream. It prints
"cancel <request-id>" on stdout for every cancel notice it receives. A
request that may not be streamed (no stream-credits in its meta) gets all N
events at once in a plain reply. Needs nothing but pyzmq (python3-zmq).

    /usr/bin/python3 examples/python/stream_clock.py tcp://127.0.0.1:5557 --count 5 --interval 1
"""
import argparse
import sys
import time

import zmq

PART_COST = 64  # what each stream message after the head costs beyond its bytes


def meta_value(meta, name):
    """The value of a "name: value" meta line, or None."""
    for line in meta.split(b"\r\n"):
        key, sep, value = line.partition(b":")
        if sep and key == name:
            return value.strip()
    return None


class Stream:
    """One request being answered in parts."""

    def __init__(self, envelope, credit, count, interval):
        self.envelope = envelope
        self.credit = credit
        self.sent = 0
        self.count = count
        self.interval = interval
        self.due = time.monotonic()
        self.blocked = False  # out of credit: nothing is due until @credit

    def step(self, sock):
        """Sends what is due and the credit allows; True when finished."""
        while self.sent < self.count and time.monotonic() >= self.due:
            event = b"data: %d\n\n" % self.sent
            if self.credit < len(event) + PART_COST:
                self.blocked = True
                return False
            sock.send_multipart(self.envelope + [b"@data", event])
            self.credit -= len(event) + PART_COST
            self.sent += 1
            self.due += self.interval
        if self.sent == self.count:
            if self.credit < PART_COST:
                self.blocked = True
                return False
            sock.send_multipart(self.envelope + [b"@end", b""])
            return True
        return False


def main():
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("endpoint", help="endpoint to bind, e.g. tcp://127.0.0.1:5557")
    ap.add_argument("--count", type=int, default=10, help="events per request (default %(default)s)")
    ap.add_argument("--interval", type=float, default=0.2, help="seconds between events (default %(default)s)")
    args = ap.parse_args()

    sock = zmq.Context().socket(zmq.ROUTER)
    sock.bind(args.endpoint)
    streams = {}  # by request id
    poller = zmq.Poller()
    poller.register(sock, zmq.POLLIN)
    while True:
        due = min((s.due for s in streams.values() if not s.blocked), default=None)
        timeout = None if due is None else max(0, (due - time.monotonic()) * 1000)
        if poller.poll(timeout):
            msg = sock.recv_multipart()
            i = msg.index(b"")
            envelope, frames = msg[: i + 1], msg[i + 1 :]
            if len(frames) != 6 or frames[0] != b"MZMQ/1":
                continue
            _, method, target, _, meta, _ = frames
            rid = meta_value(meta, b"request-id")
            if method == b"@cancel":
                streams.pop(rid, None)
                print("cancel", rid.decode(), flush=True)
                continue
            if method == b"@credit":
                if rid in streams:
                    streams[rid].credit += int(target)
                    streams[rid].blocked = False
                continue
            if method.startswith(b"@"):
                continue  # a notice this worker does not use
            credits = meta_value(meta, b"stream-credits")
            if credits is None:
                body = b"".join(b"data: %d\n\n" % n for n in range(args.count))
                sock.send_multipart(envelope + [b"200", b"Content-Type: text/event-stream\r\n", body])
                continue
            sock.send_multipart(envelope + [b"@stream", b"200", b"Content-Type: text/event-stream\r\nCache-Control: no-cache\r\n"])
            streams[rid] = Stream(envelope, int(credits), args.count, args.interval)
        for rid in [rid for rid, s in streams.items() if s.step(sock)]:
            del streams[rid]


if __name__ == "__main__":
    try:
        main()
    except KeyboardInterrupt:
        sys.exit(0)
