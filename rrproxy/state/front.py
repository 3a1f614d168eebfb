"""`--state memory`, worker side: each operation is a call to the front, whose
MemoryStore (memory.py) applies it. The front serialises the calls, so each one is
atomic across workers."""

from __future__ import annotations

from typing import Any

from ..ipc.messages import StateRequest
from ..worker.calls import CallFailed, CallUnanswered, FrontCalls
from .backend import StateError, StateFull, StateUnavailable

#: How long one operation may take before it counts as unreachable (503).
TIMEOUT = 5.0


class FrontBackend:
    """`--state memory`: each operation is a call to the front over the channel."""

    def __init__(self, calls: FrontCalls) -> None:
        self._calls = calls

    async def request(self, op: str, key: str, value: Any = None, ttl: float | None = None) -> Any:
        try:
            return await self._calls.call(
                lambda request_id: StateRequest(request_id, op, key, value, ttl), TIMEOUT
            )
        except CallUnanswered as exc:
            raise StateUnavailable(f"state store unreachable: {exc}") from None
        except CallFailed as exc:
            if exc.kind == "full":
                raise StateFull(str(exc)) from None
            raise StateError(str(exc)) from None
