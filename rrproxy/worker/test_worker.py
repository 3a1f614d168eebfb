"""The worker's message loop with a fake channel to the front: what it does with the
fds the front hands it."""

from __future__ import annotations

import gc
import socket
import warnings
from typing import Any

import pytest

from ..config import WorkerConfig
from ..ipc.messages import Rejected, Taken
from . import worker as worker_module
from .server import WorkerServer
from .trio import BACKEND
from .worker import Worker


class FakeChannel:
    """Records what the worker answers; never full, never closed."""

    closed = False

    def __init__(self) -> None:
        self.sent: list[Any] = []

    def send_nowait(self, message: Any) -> None:
        self.sent.append(message)

    async def send(self, message: Any) -> None:
        self.sent.append(message)


def _worker(**config: Any) -> tuple[Worker, FakeChannel]:
    server = WorkerServer(WorkerConfig(app="x:y", **config), 1, lambda r: "ok", False, BACKEND)
    channel = FakeChannel()
    return Worker(channel, server, []), channel  # type: ignore[arg-type]


def test_an_unusable_fd_is_closed_once_and_answered_taken(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    """A unix socket where TCP was promised: TCP_NODELAY fails after the socket
    object owns the fd. The fd is closed by that object alone (no second close that
    could hit a reused fd number, no 'unclosed socket' finaliser)."""
    # No log record: pytest's capture would keep the traceback, and with it the
    # socket object, alive past the check.
    monkeypatch.setattr(worker_module.log, "disabled", True)
    worker, channel = _worker(bind_host="127.0.0.1")
    ours, theirs = socket.socketpair()
    fd = ours.detach()
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        worker._take(5, fd)
        gc.collect()
    assert not [w for w in caught if issubclass(w.category, ResourceWarning)]
    assert channel.sent == [Taken(5, 0)]
    assert theirs.recv(10) == b""  # our end is closed: the peer sees EOF
    theirs.close()


def test_a_draining_worker_gives_the_connection_back() -> None:
    worker, channel = _worker()
    worker.server.draining = True
    ours, theirs = socket.socketpair()
    worker._take(9, ours.detach())
    assert channel.sent == [Rejected(9)]
    assert theirs.recv(10) == b""
    theirs.close()
