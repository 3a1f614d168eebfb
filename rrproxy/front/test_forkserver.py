"""The front's side of the fork server against a fake zygote on a real SEQPACKET
socketpair; the "forked" workers are real child processes of the test, so their
pidfds are real."""

from __future__ import annotations

import json
import socket
import subprocess
import time
from collections.abc import AsyncIterator
from dataclasses import dataclass
from typing import Any

import pytest
import trio

from .forkserver import UNKNOWN_EXIT, ForkServer, ForkServerError


@dataclass
class FakeProcess:
    pid: int = 0


@pytest.fixture
async def fork_server() -> AsyncIterator[tuple[ForkServer, socket.socket]]:
    ours, zygote = socket.socketpair(socket.AF_UNIX, socket.SOCK_SEQPACKET)
    server = ForkServer(FakeProcess(), trio.socket.from_stdlib_socket(ours), None)  # type: ignore[arg-type]
    async with trio.open_nursery() as nursery:
        nursery.start_soon(server.run)
        yield server, zygote
        server.close()
    zygote.close()


def _request(zygote: socket.socket) -> dict[str, Any]:
    data, fds, _, _ = socket.recv_fds(zygote, 65536, 4)
    for fd in fds:
        socket.close(fd)
    return dict(json.loads(data))


def _send(zygote: socket.socket, message: dict[str, Any]) -> None:
    zygote.send(json.dumps(message).encode())


def _exited_child(code: int) -> subprocess.Popen[bytes]:
    """A child that has exited and is not reaped yet (a zombie: its pidfd opens)."""
    child = subprocess.Popen(["sh", "-c", f"exit {code}"])
    time.sleep(0.2)
    return child


async def _spawn(server: ForkServer) -> Any:
    a, b = socket.socketpair()
    try:
        return await server.spawn(1, {}, b.fileno())
    finally:
        a.close()
        b.close()


async def test_a_worker_that_dies_at_once_gets_its_real_exit_code(
    fork_server: tuple[ForkServer, socket.socket],
) -> None:
    """The zygote answers the fork and reports the exit back to back: the report
    must find the child registered (it found nobody, and wait() gave 255 after 2 s)."""
    server, zygote = fork_server
    child = _exited_child(7)
    results: list[Any] = []

    async def spawn() -> None:
        results.append(await _spawn(server))

    async with trio.open_nursery() as nursery:
        nursery.start_soon(spawn)
        request = await trio.to_thread.run_sync(_request, zygote)
        _send(zygote, {"op": "spawned", "id": request["id"], "pid": child.pid})
        _send(zygote, {"op": "exited", "pid": child.pid, "code": 7})
    with trio.fail_after(1):
        assert await results[0].wait() == 7
    child.wait()


async def test_a_fork_answered_too_late_is_killed_not_left_running(
    fork_server: tuple[ForkServer, socket.socket], monkeypatch: pytest.MonkeyPatch
) -> None:
    server, zygote = fork_server
    monkeypatch.setattr("rrproxy.front.forkserver.SPAWN_TIMEOUT", 0.2)
    late = subprocess.Popen(["sleep", "30"])
    try:
        with pytest.raises(ForkServerError, match="no answer"):
            await _spawn(server)
        request = _request(zygote)
        _send(zygote, {"op": "spawned", "id": request["id"], "pid": late.pid})
        with trio.fail_after(5):
            while late.poll() is None:
                await trio.sleep(0.02)
        assert late.returncode == -9
        assert server.children == 0
    finally:
        late.kill()
        late.wait()


async def test_refusals_and_nonsense_reports_give_errors_not_a_dead_reader(
    fork_server: tuple[ForkServer, socket.socket],
) -> None:
    server, zygote = fork_server
    # Nonsense first: the reader must go on.
    _send(zygote, {"op": "exited", "pid": "x", "code": None})
    _send(zygote, {"op": "spawned", "id": [1], "pid": -3})
    zygote.send(b"not json")

    async def refused() -> None:
        with pytest.raises(ForkServerError, match="bad slot"):
            await _spawn(server)

    async with trio.open_nursery() as nursery:
        nursery.start_soon(refused)
        request = await trio.to_thread.run_sync(_request, zygote)
        _send(zygote, {"op": "spawned", "id": request["id"], "error": "bad slot 'x'"})
    assert server.alive

    child = _exited_child(0)
    results: list[Any] = []

    async def spawn() -> None:
        results.append(await _spawn(server))

    async with trio.open_nursery() as nursery:
        nursery.start_soon(spawn)
        request = await trio.to_thread.run_sync(_request, zygote)
        _send(zygote, {"op": "spawned", "id": request["id"], "pid": child.pid})
    _send(zygote, {"op": "exited", "pid": child.pid, "code": 0})
    with trio.fail_after(1):
        assert await results[0].wait() == 0
    child.wait()


async def test_when_the_zygote_goes_its_workers_get_unknown_exit(
    fork_server: tuple[ForkServer, socket.socket],
) -> None:
    server, zygote = fork_server
    child = _exited_child(3)
    results: list[Any] = []

    async def spawn() -> None:
        results.append(await _spawn(server))

    async with trio.open_nursery() as nursery:
        nursery.start_soon(spawn)
        request = await trio.to_thread.run_sync(_request, zygote)
        _send(zygote, {"op": "spawned", "id": request["id"], "pid": child.pid})
    zygote.close()
    with trio.fail_after(1):
        assert await results[0].wait() == UNKNOWN_EXIT
    child.wait()
    with pytest.raises(ForkServerError, match="gone"):
        await _spawn(server)
