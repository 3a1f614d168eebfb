"""cluster's message dispatch with a fake send and a real trio nursery: every kind of
callback runs, and one that fails is logged without stopping the others."""

from __future__ import annotations

import functools
from collections.abc import Iterator
from typing import Any

import pytest
import trio

from . import cluster


@pytest.fixture(autouse=True)
def callbacks() -> Iterator[list[Any]]:
    """The module's globals as a worker would have them, restored afterwards."""
    saved = list(cluster._callbacks), cluster._send, cluster._spawn
    cluster._callbacks.clear()
    yield cluster._callbacks
    cluster._callbacks[:], cluster._send, cluster._spawn = saved


async def _dispatch_all(message: Any, sender: int) -> None:
    sent: list[tuple[Any, str]] = []

    async def send(payload: Any, to: str) -> None:
        sent.append((payload, to))

    async with trio.open_nursery() as nursery:
        cluster.install(send, nursery.start_soon)
        cluster._dispatch(message, sender)


async def test_every_kind_of_callback_gets_the_message(callbacks: list[Any]) -> None:
    got: list[tuple[str, Any, int]] = []

    def plain(message: Any, sender: int) -> None:
        got.append(("plain", message, sender))

    async def coroutine_function(message: Any, sender: int) -> None:
        await trio.lowlevel.checkpoint()
        got.append(("async", message, sender))

    class AsyncCallable:
        async def __call__(self, message: Any, sender: int) -> None:
            await trio.lowlevel.checkpoint()
            got.append(("async __call__", message, sender))

    async def tagged(tag: str, message: Any, sender: int) -> None:
        got.append((tag, message, sender))

    for callback in (
        plain,
        coroutine_function,
        AsyncCallable(),
        functools.partial(tagged, "partial"),
    ):
        cluster.on_message(callback)
    await _dispatch_all({"k": 1}, 3)
    assert sorted(kind for kind, _, _ in got) == ["async", "async __call__", "partial", "plain"]
    assert all(message == {"k": 1} and sender == 3 for _, message, sender in got)


async def test_a_failing_callback_is_logged_and_the_others_still_run(
    callbacks: list[Any], caplog: pytest.LogCaptureFixture
) -> None:
    got: list[str] = []

    def broken(message: Any, sender: int) -> None:
        raise ValueError("plain boom")

    async def broken_async(message: Any, sender: int) -> None:
        raise ValueError("async boom")

    def fine(message: Any, sender: int) -> None:
        got.append(message)

    for callback in (broken, broken_async, fine):
        cluster.on_message(callback)
    await _dispatch_all("m", 1)
    assert got == ["m"]
    assert "plain boom" in caplog.text and "async boom" in caplog.text


async def test_messages_outside_a_worker_or_too_large_are_refused() -> None:
    cluster._send = None
    with pytest.raises(cluster.NotInWorker):
        await cluster.broadcast("x")

    async def send(payload: Any, to: str) -> None:
        raise AssertionError("not sent")

    cluster.install(send, lambda *args: None)
    with pytest.raises(cluster.MessageTooLarge):
        await cluster.send_to_front("x" * cluster.MAX_MESSAGE_BYTES)
    with pytest.raises(TypeError, match="JSON-compatible"):
        await cluster.send_to_worker(1, object())
