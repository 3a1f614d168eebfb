"""The two backends' socket waits on real sockets: notify_closing wakes every task
waiting on the fd, a second waiter in the same direction is refused the same way on
both loops, and closing leaves no reader behind."""

from __future__ import annotations

import socket

import pytest

from .asyncio import make_backend
from .backend import Backend, ResourceBusy, ResourceClosed
from .trio import BACKEND as TRIO

BACKENDS = [TRIO, make_backend("asyncio")]


def _full_pair() -> tuple[socket.socket, socket.socket]:
    """A connected pair whose first end cannot take another byte (so a wait for
    writable blocks) and has nothing to read (so a wait for readable blocks)."""
    ours, theirs = socket.socketpair()
    ours.setblocking(False)
    try:
        while True:
            ours.send(b"x" * 65536)
    except BlockingIOError:
        pass
    return ours, theirs


@pytest.mark.parametrize("backend", BACKENDS, ids=lambda b: b.name)
def test_notify_closing_wakes_the_reader_and_the_writer(backend: Backend) -> None:
    ours, theirs = _full_pair()
    woken: list[str] = []

    async def wait(kind: str) -> None:
        try:
            if kind == "readable":
                await backend.wait_readable(ours)
            else:
                await backend.wait_writable(ours)
        except ResourceClosed:
            woken.append(kind)

    async def main() -> None:
        with backend.move_on_after(5):
            async with backend.task_group() as tasks:
                tasks.start_soon(wait, "readable")
                tasks.start_soon(wait, "writable")
                await backend.sleep(0.05)
                backend.notify_closing(ours)

    backend.run(main)
    assert sorted(woken) == ["readable", "writable"]
    ours.close()
    theirs.close()


@pytest.mark.parametrize("backend", BACKENDS, ids=lambda b: b.name)
def test_a_second_reader_of_one_fd_is_refused_and_the_first_still_wakes(
    backend: Backend,
) -> None:
    ours, theirs = socket.socketpair()
    outcome: list[str] = []

    async def first() -> None:
        await backend.wait_readable(ours)
        outcome.append("first woke")

    async def main() -> None:
        with backend.move_on_after(5):
            async with backend.task_group() as tasks:
                tasks.start_soon(first)
                await backend.sleep(0.05)
                try:
                    await backend.wait_readable(ours)
                except ResourceBusy:
                    outcome.append("second refused")
                theirs.send(b"!")

    backend.run(main)
    assert outcome == ["second refused", "first woke"]
    ours.close()
    theirs.close()
