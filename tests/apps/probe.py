"""A test app that says which worker served it and can misbehave on request."""

from __future__ import annotations

import os
import time
from urllib.parse import parse_qs

import anyio

from rrproxy import Request, Response


def _arg(request: Request, name: str, default: str) -> str:
    return parse_qs(request.query).get(name, [default])[0]


def _channel_fd() -> int:
    import sys

    return int(sys.argv[sys.argv.index("--fd") + 1])


def _who(request: Request) -> list[tuple[str, str]]:
    return [("x-worker-id", str(request.worker_id)), ("x-worker-pid", str(os.getpid()))]


async def handler(request: Request) -> Response | str | dict | int:
    path = request.path
    if path == "/":
        return Response(200, f"worker={request.worker_id} pid={os.getpid()}\n", _who(request))
    if path == "/echo":
        body = await request.body()
        headers = [*_who(request), ("x-body-length", str(len(body)))]
        return Response(200, body, headers)
    if path == "/stream":
        count = int(_arg(request, "n", "3"))

        async def chunks():
            for i in range(count):
                yield f"chunk {i}\n"
                await anyio.sleep(0)

        return Response(200, chunks(), _who(request))
    if path == "/stream-raise":

        async def broken():
            yield b"first chunk\n"
            raise RuntimeError("stream broke")

        return Response(200, broken(), _who(request))
    if path == "/raise":
        raise RuntimeError("the handler failed on purpose")
    if path == "/bad":
        return 42
    if path == "/slow":
        await anyio.sleep(float(_arg(request, "s", "1")))
        return Response(200, b"slow done\n", _who(request))
    if path == "/block":
        # Blocks the worker's event loop, like a CPU-bound or sync-I/O handler.
        time.sleep(float(_arg(request, "s", "1")))
        return Response(200, b"block done\n", _who(request))
    if path == "/channel-garbage":
        # Misbehave as a broken worker would: garbage on the channel to the front.
        os.write(_channel_fd(), b"\xfe this is not a message")
        return Response(200, b"sent garbage\n", _who(request))
    if path == "/channel-close":
        # The worker's end of its channel disappears while the worker lives on.
        import socket

        socket.socket(fileno=os.dup(_channel_fd())).shutdown(socket.SHUT_RDWR)
        return Response(200, b"closed my channel\n", _who(request))
    if path == "/channel-unknown":
        # A well-formed datagram of a kind the front never expects from a worker.
        from rrproxy.ipc.codec import encode
        from rrproxy.ipc.messages import Configure

        os.write(_channel_fd(), encode(Configure(1, {})))
        return Response(200, b"sent configure\n", _who(request))
    if path == "/json":
        return {"worker": request.worker_id, "method": request.method}
    if path == "/text":
        return "plain text"
    if path == "/headers":
        return {
            "accept": request.headers.get("ACCEPT"),
            "x-multi": request.headers.getall("x-multi"),
            "client": list(request.client) if request.client else None,
            "http_version": request.http_version,
            "query": request.query,
        }
    return Response(404, b"not found\n", _who(request))


def sync_handler(request: Request) -> str:
    """A plain `def` handler: runs on the worker's thread."""
    return f"sync worker={request.worker_id}"


not_callable = 42


_hoard: list[bytes] = []


async def memory_handler(request: Request) -> Response:
    """/grow?mb=N keeps N MiB alive in this worker (to cross --max-memory)."""
    if request.path == "/grow":
        megabytes = int(_arg(request, "mb", "50"))
        _hoard.append(b"x" * (megabytes * 2**20))
    return Response(200, f"pid={os.getpid()}\n", _who(request))
