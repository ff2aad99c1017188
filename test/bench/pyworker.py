#!/usr/bin/python3
"""Benchmark worker in Python: a pyzmq REP socket answering the same bytes
as the Go peer ("hello world\\n", or 64 KiB for a "?big" target)."""
import sys

import zmq

SMALL, BIG = b"hello world\n", b"x" * 65536
sock = zmq.Context().socket(zmq.REP)
sock.bind(sys.argv[1])
while True:
    proto, method, target, headers, meta, body = sock.recv_multipart()
    sock.send_multipart([b"200", b"Content-Type: text/plain\r\n", BIG if target.endswith(b"?big") else SMALL])
