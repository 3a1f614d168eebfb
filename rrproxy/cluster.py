"""Messaging between workers, like Node's `process.send` / `cluster.on('message')`.

Inside a worker (a native handler or an ASGI app)::

    from rrproxy import cluster

    @cluster.on_message
    async def got(message, sender):       # sender: the worker id that sent it
        ...

    async def handler(request):
        await cluster.broadcast({"event": "cache-clear"})   # every worker, this one too
        await cluster.send_to_worker(2, "hello")            # one worker, by id
        await cluster.send_to_front({"note": "..."})        # logged by the front
        return f"I am worker {cluster.worker_id} of {cluster.worker_count}"

Messages are JSON-compatible values of at most MAX_MESSAGE_BYTES once encoded; they
travel over each worker's existing channel through the front.
"""

from __future__ import annotations

import inspect
import json
import logging
from collections.abc import Awaitable, Callable
from typing import Any

log = logging.getLogger("rrproxy.cluster")

MAX_MESSAGE_BYTES = 64 * 1024

#: This worker's slot id (1..N) and the number of workers; 0 outside a worker.
worker_id = 0
worker_count = 0

Callback = Callable[[Any, int], Any]
_callbacks: list[Callback] = []
_send: Callable[[Any, str], Awaitable[None]] | None = None
_spawn: Callable[..., None] | None = None


class MessageTooLarge(ValueError):
    """The message encodes to more than MAX_MESSAGE_BYTES."""


class NotInWorker(RuntimeError):
    """The messaging API is used outside a worker process."""


class MessageDropped(RuntimeError):
    """The front could not deliver the message to every recipient: a worker that does
    not read its messages (its queue in the front is full), an unknown worker id, or
    no answer from the front in time."""


def install(send: Callable[[Any, str], Awaitable[None]], spawn: Callable[..., None]) -> None:
    """Called by the worker: how messages leave, and how async callbacks are run."""
    global _send, _spawn
    _send, _spawn = send, spawn


def on_message(callback: Callback) -> Callback:
    """Register `callback(message, sender_worker_id)` (plain or async); usable as a
    decorator. Async callbacks run as tasks of the worker; exceptions are logged."""
    _callbacks.append(callback)
    return callback


async def send_to_front(message: Any) -> None:
    """Logged by the front. Raises MessageTooLarge, or MessageDropped if the front
    did not confirm it."""
    await _deliver(message, "front")


async def send_to_worker(target: int, message: Any) -> None:
    """To one worker by id; returns once the front has queued it for that worker.
    Raises MessageDropped if it could not (unknown worker, or one whose queue is
    full because it does not read its messages)."""
    await _deliver(message, str(int(target)))


async def broadcast(message: Any) -> None:
    """To every worker's on_message callbacks, this worker's included. Raises
    MessageDropped if some worker could not be given it (the others still are)."""
    await _deliver(message, "all")


async def _deliver(message: Any, to: str) -> None:
    if _send is None:
        raise NotInWorker("rrproxy.cluster works inside an rrproxy worker only")
    try:
        size = len(json.dumps(message, separators=(",", ":")).encode())
    except (TypeError, ValueError) as exc:
        raise TypeError(f"cluster messages must be JSON-compatible: {exc}") from None
    if size > MAX_MESSAGE_BYTES:
        raise MessageTooLarge(
            f"cluster message of {size} bytes exceeds the limit of {MAX_MESSAGE_BYTES} bytes"
        )
    await _send(message, to)


def _dispatch(message: Any, sender: int) -> None:
    """Called by the worker when a message arrives."""
    for callback in list(_callbacks):
        # Called, then judged by what it gave: an async function, an object with an
        # async __call__, a functools.partial of either, or a plain function returning
        # a coroutine all give an awaitable, which is run as a task. (Asking
        # iscoroutinefunction(callback) first missed all but the first.)
        try:
            result = callback(message, sender)
        except Exception:
            log.exception("cluster on_message callback %r raised", callback)
            continue
        if inspect.isawaitable(result):
            assert _spawn is not None
            _spawn(_run_async, callback, result)


async def _run_async(callback: Callback, result: Awaitable[Any]) -> None:
    try:
        await result
    except Exception:
        log.exception("cluster on_message callback %r raised", callback)
