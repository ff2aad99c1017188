#!/usr/bin/python3
"""A WebSocket echo worker (docs/PROTOCOL.md, "WebSockets"): binds a ROUTER,
accepts every WebSocket handshake (choosing the first subprotocol offered,
if any) and echoes each message with its type. A text message "close" is
answered by closing with code 4000. It prints "closed <connection-id>
<code>" on stdout, flushed, for every close it learns of (the client's, the
front's, its own), with the connection-id of the handshake's meta.

It counts credits both ways: an echo goes out only within the credit the
front granted (stream-credits at first, then each @credit), and the credit
of a client's message is granted back once its echo is out, so a client
that does not read its echoes is slowed down. A plain request gets a plain
200. Needs nothing but pyzmq (python3-zmq).

    /usr/bin/python3 examples/python/ws_echo.py tcp://127.0.0.1:5559
"""
import argparse
import sys

import zmq

PART_COST = 64  # what each WebSocket message costs beyond its bytes


def meta_value(meta, name):
    """The value of a "name: value" meta line, or None."""
    for line in meta.split(b"\r\n"):
        key, sep, value = line.partition(b":")
        if sep and key == name:
            return value.strip()
    return None


class WebSocket:
    """One accepted WebSocket: its envelope, the credit the front granted,
    and the echoes waiting for it."""

    def __init__(self, envelope, connection_id, credit):
        self.envelope = envelope
        self.connection_id = connection_id
        self.credit = credit
        self.out = []  # (kind, data, cost of the client's message)

    def flush(self, sock):
        """Sends the echoes the credit allows, granting back each one's
        client message."""
        while self.out and self.credit >= len(self.out[0][1]) + PART_COST:
            kind, data, cost = self.out.pop(0)
            self.credit -= len(data) + PART_COST
            sock.send_multipart(self.envelope + [kind, data])
            sock.send_multipart(self.envelope + [b"@credit", b"%d" % cost])


def closed(ws, code):
    print("closed", ws.connection_id, code, flush=True)


def main():
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("endpoint", help="endpoint to bind, e.g. tcp://127.0.0.1:5559")
    args = ap.parse_args()

    sock = zmq.Context().socket(zmq.ROUTER)
    sock.setsockopt(zmq.LINGER, 0)
    sock.bind(args.endpoint)
    sockets = {}  # by request id
    while True:
        msg = sock.recv_multipart()
        i = msg.index(b"")
        envelope, frames = msg[: i + 1], msg[i + 1 :]
        if len(frames) != 6 or frames[0] != b"MZMQ/1":
            continue
        _, method, target, _, meta, body = frames
        rid = meta_value(meta, b"request-id")
        ws = sockets.get(rid)
        if meta_value(meta, b"websocket") == b"1":
            offered = meta_value(meta, b"websocket-protocols")
            headers = b""
            if offered:
                headers = b"Sec-WebSocket-Protocol: " + offered.split(b",")[0].strip() + b"\r\n"
            conn = (meta_value(meta, b"connection-id") or rid).decode()
            sockets[rid] = WebSocket(envelope, conn, int(meta_value(meta, b"stream-credits")))
            sock.send_multipart(envelope + [b"@accept", headers])
        elif method in (b"@text", b"@binary") and ws:
            if method == b"@text" and body == b"close":
                sock.send_multipart(envelope + [b"@ws-close", b"4000"])
                closed(ws, 4000)
                del sockets[rid]
                continue
            ws.out.append((method, body, len(body) + PART_COST))
            ws.flush(sock)
        elif method == b"@credit" and ws:
            ws.credit += int(target)
            ws.flush(sock)
        elif method == b"@ws-close" and ws:
            closed(ws, target.decode())
            del sockets[rid]
        elif not method.startswith(b"@"):
            sock.send_multipart(envelope + [b"200", b"Content-Type: text/plain\r\n",
                                            b"not a WebSocket handshake: " + method + b" " + target + b"\n"])


if __name__ == "__main__":
    try:
        main()
    except KeyboardInterrupt:
        sys.exit(0)
