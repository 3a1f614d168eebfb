"""accept_batch: the one errno policy of every accept loop, with fake accepts and a
real loopback listener."""

from __future__ import annotations

import errno
import socket
from collections.abc import Callable, Iterator
from typing import Any

import pytest

from .listeners import AcceptEnd, accept_batch


def scripted(*outcomes: object) -> Callable[[], tuple[object, Any]]:
    """An accept() that returns or raises each outcome in turn."""
    queue: Iterator[object] = iter(outcomes)

    def accept() -> tuple[object, Any]:
        outcome = next(queue)
        if isinstance(outcome, BaseException):
            raise outcome
        return outcome, ("127.0.0.1", 1)

    return accept


def test_stops_at_the_limit_and_when_drained() -> None:
    got: list[tuple[object, Any]] = []
    assert accept_batch(scripted(1, 2, 3), 2, got) == (AcceptEnd.LIMIT, None)
    assert [c for c, _ in got] == [1, 2]
    got.clear()
    end, error = accept_batch(scripted(1, BlockingIOError()), 5, got)
    assert (end, error, len(got)) == (AcceptEnd.DRAINED, None, 1)


@pytest.mark.parametrize("code", [errno.ECONNABORTED, errno.EPROTO, errno.EPERM])
def test_a_client_that_gave_up_is_skipped(code: int) -> None:
    got: list[tuple[object, Any]] = []
    end, _ = accept_batch(scripted(OSError(code, "gone"), 7, BlockingIOError()), 5, got)
    assert end is AcceptEnd.DRAINED and [c for c, _ in got] == [7]


@pytest.mark.parametrize("code", [errno.EMFILE, errno.ENFILE, errno.ENOMEM, errno.ENOBUFS])
def test_out_of_resources_keeps_what_was_accepted(code: int) -> None:
    got: list[tuple[object, Any]] = []
    end, error = accept_batch(scripted(1, OSError(code, "out")), 5, got)
    assert end is AcceptEnd.OUT_OF_RESOURCES and error is not None and error.errno == code
    assert [c for c, _ in got] == [1]


def test_a_closed_listener_ends_the_loop() -> None:
    listener = socket.socket()
    listener.close()
    got: list[tuple[socket.socket, Any]] = []
    end, error = accept_batch(listener.accept, 5, got)
    assert end is AcceptEnd.CLOSED and isinstance(error, OSError) and got == []


def test_real_listener_accepts_what_is_queued() -> None:
    with socket.create_server(("127.0.0.1", 0)) as listener:
        listener.setblocking(False)
        clients = [socket.create_connection(listener.getsockname()) for _ in range(3)]
        got: list[tuple[socket.socket, Any]] = []
        try:
            assert accept_batch(listener.accept, 2, got)[0] is AcceptEnd.LIMIT
            assert accept_batch(listener.accept, 2, got)[0] is AcceptEnd.DRAINED
            assert len(got) == 3
        finally:
            for sock, _ in got:
                sock.close()
            for client in clients:
                client.close()
