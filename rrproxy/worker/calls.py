"""Calls from a worker to the front that expect an answer (state operations, cluster
messages that want a delivery receipt): a request id goes out in the message, a
`Reply` with the same id comes back over the channel."""

from __future__ import annotations

import itertools
from collections.abc import Awaitable, Callable
from typing import Any

from ..ipc.messages import Message, Reply
from .backend import Backend, Event


class CallFailed(Exception):
    """The front answered with an error; `kind` says which (see Reply.kind)."""

    def __init__(self, error: str, kind: str = "") -> None:
        super().__init__(error)
        self.kind = kind


class CallUnanswered(Exception):
    """No answer: the front is gone, or did not answer in time."""


class _Pending:
    __slots__ = ("done", "reply")

    def __init__(self, done: Event) -> None:
        self.done = done
        self.reply: Reply | None = None


class FrontCalls:
    """The worker's calls to the front in flight, by request id: `call` sends and
    waits, the channel reader hands each Reply to `reply`."""

    def __init__(self, send: Callable[[Message], Awaitable[None]], backend: Backend) -> None:
        self._send = send
        self._backend = backend
        self._ids = itertools.count(1)
        self._pending: dict[int, _Pending] = {}
        self._gone: str | None = None

    async def call(self, build: Callable[[int], Message], timeout: float) -> Any:
        """Send `build(request_id)` and wait for its Reply; its value, or CallFailed,
        or CallUnanswered after `timeout` seconds."""
        if self._gone is not None:
            raise CallUnanswered(self._gone)
        request_id = next(self._ids)
        pending = _Pending(self._backend.event())
        self._pending[request_id] = pending
        try:
            with self._backend.move_on_after(timeout):
                try:
                    await self._send(build(request_id))
                except Exception as exc:
                    raise CallUnanswered(f"cannot reach the front: {exc}") from None
                await pending.done.wait()
        finally:
            self._pending.pop(request_id, None)
        reply = pending.reply
        if reply is None:
            raise CallUnanswered(self._gone or f"the front did not answer within {timeout:g} s")
        if not reply.ok:
            raise CallFailed(reply.error, reply.kind)
        return reply.value

    def reply(self, message: Reply) -> None:
        """Wake the call waiting for `message`; a late Reply (its call gave up) is
        dropped."""
        pending = self._pending.get(message.request_id)
        if pending is not None:
            pending.reply = message
            pending.done.set()

    def fail_all(self, why: str) -> None:
        """The front went away: every waiting call ends now, and later ones at once."""
        self._gone = why
        for pending in self._pending.values():
            pending.done.set()
