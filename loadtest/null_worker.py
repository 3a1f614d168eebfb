"""A worker that does nothing but take connections: for `python -m loadtest front`,
which measures the front alone. It speaks the worker protocol (Hello, Configure,
Ready, Stats as heartbeat), and for each connection handed to it reads once, writes a
canned response, closes, and answers Taken. Blocking and minimal, so the front is
what runs out of CPU first. Started instead of rrproxy.worker when
RRPROXY_WORKER_MODULE=loadtest.null_worker (benchmarks only)."""

from __future__ import annotations

import argparse
import os
import selectors
import socket
import time

from rrproxy.ipc.channel import ChannelClosed, WorkerChannel
from rrproxy.ipc.messages import (
    PROTOCOL_VERSION,
    Configure,
    Hello,
    NewConn,
    NewConns,
    Poll,
    Ready,
    Stats,
    Stop,
    Taken,
)

RESPONSE = b"HTTP/1.1 200 OK\r\nContent-Length: 3\r\nConnection: close\r\n\r\nok\n"


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--fd", type=int, required=True)
    parser.add_argument("--slot", type=int, required=True)
    args = parser.parse_args()
    os.set_inheritable(args.fd, False)
    channel = WorkerChannel(socket.socket(fileno=args.fd))
    channel.send_blocking(Hello(PROTOCOL_VERSION, os.getpid()))
    received = channel.receive_blocking(60)
    if received is None or not isinstance(received[0], Configure):
        return
    channel.send_blocking(Ready())
    selector = selectors.DefaultSelector()
    selector.register(channel.fileno(), selectors.EVENT_READ, None)
    served = 0
    last_stats = time.monotonic()
    while True:
        for key, _ in selector.select(1.0):
            if key.data is None:
                while True:
                    try:
                        got = channel.receive_nowait()
                    except ChannelClosed:
                        return
                    if got is None:
                        break
                    message, fds = got
                    ids = (
                        (message.conn_id,)
                        if isinstance(message, NewConn)
                        else message.conn_ids
                        if isinstance(message, NewConns)
                        else ()
                    )
                    for conn_id, fd in zip(ids, fds, strict=False):
                        sock = socket.socket(socket.AF_INET, socket.SOCK_STREAM, 0, fileno=fd)
                        sock.setblocking(False)
                        selector.register(sock, selectors.EVENT_READ, conn_id)
                    if isinstance(message, Stop):
                        return
                    if isinstance(message, Poll):
                        channel.send_nowait(Stats(served, 0, served))
            else:
                sock = key.fileobj
                try:
                    sock.recv(65536)
                except OSError:
                    pass
                try:
                    # On the first read, as a real worker answers.
                    channel.send_nowait(Taken(key.data, 0))
                except ChannelClosed:
                    return
                try:
                    sock.send(RESPONSE)
                except OSError:
                    pass
                selector.unregister(sock)
                sock.close()
                served += 1
        if time.monotonic() - last_stats >= 1.0:
            last_stats = time.monotonic()
            channel.send_nowait(Stats(served, 0, served))


if __name__ == "__main__":
    main()
