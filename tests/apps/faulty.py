"""User code doing what careless or hostile user code does: blocking the loop,
exiting, flooding other workers with messages, filling the shared state, starting
children that outlive the worker, and writing garbage to its own channel to the
front (its fd number is in argv)."""

from __future__ import annotations

import array
import json
import os
import socket
import sys
import tempfile
import time
from urllib.parse import parse_qs

import anyio

from rrproxy import Request, Response, cluster, state

# A slot listed in this file cannot start (simulates code that breaks on import
# for some workers only, e.g. after a bad deploy).
_BROKEN = os.environ.get("FAULTY_BROKEN_SLOTS_FILE")
if _BROKEN and os.path.exists(_BROKEN):
    with open(_BROKEN) as broken:
        if str(cluster.worker_id) in broken.read().split():
            raise RuntimeError(f"worker {cluster.worker_id} is broken on purpose")

received = 0


@cluster.on_message
def _count(message: object, sender: int) -> None:
    global received
    received += 1


def _arg(request: Request, name: str, default: str) -> str:
    return parse_qs(request.query).get(name, [default])[0]


def _channel_fd() -> int:
    return int(sys.argv[sys.argv.index("--fd") + 1])


def _who(request: Request) -> list[tuple[str, str]]:
    return [("x-worker-id", str(request.worker_id)), ("x-worker-pid", str(os.getpid()))]


def _bad_message(kind: str) -> bytes:
    """Datagrams that once crashed the front, each a different way."""
    if kind == "deep":  # 50,000-deep JSON: RecursionError in json.loads
        return b"\x18" + b'{"payload":' + b"[" * 50_000 + b"]" * 50_000 + b"}"
    if kind == "superscript":  # "²".isdigit() is True, int("²") raises
        return b"\x18" + json.dumps({"payload": 1, "to": "\u00b2"}).encode()
    if kind == "longaddr":  # int() of 5,000 digits raises ValueError
        return b"\x18" + json.dumps({"payload": 1, "to": "9" * 5000}).encode()
    if kind == "statuskey":
        body = {
            "connections_total": 1,
            "connections_active": 0,
            "requests_total": 1,
            "statuses": {"\u00b2\u00b2\u00b2": 1},
        }
        return b"\x14" + json.dumps(body).encode()
    if kind == "surrogate":  # valid JSON, a key no UTF-8 encoder takes
        return b'\x1b{"request_id":1,"op":"get","key":"\\ud800"}'
    if kind == "nan":
        return b'\x14{"connections_total":1,"connections_active":0,"requests_total":1,' + (
            b'"latency_sum":NaN}'
        )
    raise ValueError(kind)


async def handler(request: Request) -> Response:
    path = request.path
    if path == "/":
        return Response(200, f"worker={request.worker_id} pid={os.getpid()}\n", _who(request))
    if path == "/slow":
        await anyio.sleep(float(_arg(request, "s", "0.05")))
        return Response(200, f"slow {os.getpid()}\n", _who(request))
    if path == "/chaos":
        # Say which process started this request before doing the work, so a test
        # can tell whose death a failed request is explained by.
        log_path = os.environ.get("FAULTY_START_LOG")
        if log_path:
            line = f"{_arg(request, 'id', '-')} {os.getpid()}\n".encode()
            fd = os.open(log_path, os.O_WRONLY | os.O_APPEND | os.O_CREAT, 0o600)
            try:
                os.write(fd, line)
            finally:
                os.close(fd)
        await anyio.sleep(float(_arg(request, "s", "0.05")))
        return Response(200, f"chaos {os.getpid()}\n", _who(request))
    if path == "/status-with-body":
        return Response(int(_arg(request, "code", "204")), b"a body that must not go out")
    if path == "/wrong-length":
        return Response(200, b"12345", [("content-length", "10")])
    if path == "/raise-h11":
        import h11

        kind = _arg(request, "kind", "local")
        raise h11.LocalProtocolError("x") if kind == "local" else h11.RemoteProtocolError("x")
    if path == "/block":
        time.sleep(float(_arg(request, "s", "1")))
        return Response(200, b"block done\n", _who(request))
    if path == "/exit":
        os._exit(1)
    if path == "/flood":
        to, count, size = _arg(request, "to", "all"), int(_arg(request, "n", "5")), 0
        payload = "x" * (int(_arg(request, "kb", "60")) * 1024)
        delivered = dropped = 0
        for _ in range(count):
            try:
                if to == "all":
                    await cluster.broadcast(payload)
                else:
                    await cluster.send_to_worker(int(to), payload)
                delivered += 1
            except cluster.MessageDropped:
                dropped += 1
            size += len(payload)
        return Response.json({"delivered": delivered, "dropped": dropped})
    if path == "/received":
        return Response.json({"received": received, "worker": request.worker_id})
    if path == "/spawn-sleeper":
        os.system(f"sleep {float(_arg(request, 's', '40'))} &")
        return Response(200, b"spawned\n", _who(request))
    if path == "/child-fds":
        # What a child started with os.system() inherits (fork + exec, no close).
        with tempfile.NamedTemporaryFile("r", suffix=".fds") as out:
            os.system(f"ls -l /proc/self/fd > {out.name} 2>/dev/null")
            return Response(200, out.read(), _who(request))
    if path == "/env":
        return Response.json(dict(os.environ))
    if path == "/ipc":
        kind = _arg(request, "kind", "deep")
        fd = _channel_fd()
        if kind == "empty":
            # An empty record reads as 0 bytes, like the end of the channel.
            with socket.socket(fileno=os.dup(fd)) as channel:
                channel.send(b"")
        elif kind == "fd":
            # A well-formed message with a descriptor attached: the front never
            # accepts fds from a worker and must close it, not keep it.
            with socket.socket(fileno=os.dup(fd)) as channel:
                left, right = socket.socketpair()
                body = json.dumps({"payload": "with an fd", "to": "front"}).encode()
                fds = array.array("i", [left.fileno()])
                channel.sendmsg([b"\x18" + body], [(socket.SOL_SOCKET, socket.SCM_RIGHTS, fds)])
                left.close()
                right.close()
        else:
            os.write(fd, _bad_message(kind))
        return Response(200, f"sent {kind}\n", _who(request))
    if path == "/state-fill":
        size, count = int(_arg(request, "kb", "100")), int(_arg(request, "n", "100"))
        value = "v" * (size * 1024)
        stored = 0
        for i in range(count):
            try:
                await state.set(f"fill:{os.getpid()}:{i}", value)
            except state.StateFull as exc:
                return Response.json({"stored": stored, "full": str(exc)})
            stored += 1
        return Response.json({"stored": stored, "full": None})
    if path == "/state-full-uncaught":
        await state.set(f"big:{os.getpid()}:{time.time()}", "v" * 100_000)
        return Response(200, b"stored\n")
    return Response(404, b"not found\n", _who(request))
