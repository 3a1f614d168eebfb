"""Shared state across workers: `from rrproxy import state`.

    count = await state.incr("hits")                 # atomic across all workers
    await state.set("session:abc", {"user": 7}, ttl=1800)
    session = await state.get("session:abc")         # None when missing or expired
    await state.expire("session:abc", 60)
    await state.delete("session:abc")

Values are bytes, str, or JSON-compatible data (what you set is what you get back).
With the default `--state memory` the front process holds the data (it survives worker
restarts and reloads) and serialises every operation. A handler whose state call
cannot reach the store fails with 503; the worker lives on.
"""

from __future__ import annotations

import base64
import json
from typing import Any, Protocol

from .ipc.messages import StateRequest
from .state_store import MAX_KEY_BYTES, MAX_VALUE_BYTES
from .worker.calls import CallFailed, CallUnanswered, FrontCalls

#: How long one operation may take before it counts as unreachable (503).
TIMEOUT = 5.0


class StateError(Exception):
    """The store refused the operation (e.g. incr on a value that is not a number)."""


class StateUnavailable(StateError):
    """The store cannot be reached; the request is answered 503."""


class StateKeyTooLarge(StateError, ValueError):
    pass


class StateValueTooLarge(StateError, ValueError):
    pass


class StateFull(StateError):
    """The store is at its memory or key limit (--state-max-memory): the value was
    not stored. A handler may catch it and answer 507 or 503; uncaught, the request
    is answered 507 Insufficient Storage."""


class Backend(Protocol):
    """Where the operations go: the front (memory) or Redis."""

    async def request(
        self, op: str, key: str, value: Any = None, ttl: float | None = None
    ) -> Any: ...


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


_client: Backend | None = None


def install(backend: Backend | None) -> None:
    """Called by the worker once it knows its --state backend."""
    global _client
    _client = backend


def _encode(value: Any) -> dict[str, Any]:
    if isinstance(value, bytes | bytearray | memoryview):
        tagged = {"t": "bytes", "v": base64.b64encode(bytes(value)).decode()}
    else:
        tagged = {"t": "json", "v": value}
    try:
        size = len(json.dumps(tagged, separators=(",", ":")))
    except (TypeError, ValueError) as exc:
        raise TypeError(f"state values are bytes, str or JSON-compatible: {exc}") from None
    if size > MAX_VALUE_BYTES:
        raise StateValueTooLarge(
            f"state value of {size} bytes encoded exceeds the limit of {MAX_VALUE_BYTES} bytes"
        )
    return tagged


def _decode(tagged: Any) -> Any:
    if tagged is None:
        return None
    if isinstance(tagged, dict) and tagged.get("t") == "bytes":
        return base64.b64decode(tagged["v"])
    if isinstance(tagged, dict) and tagged.get("t") == "json":
        return tagged["v"]
    raise StateError("the store returned a value in an unknown form")


def _check_key(key: str) -> None:
    if not isinstance(key, str):
        raise TypeError("state keys are str")
    if len(key.encode()) > MAX_KEY_BYTES:
        raise StateKeyTooLarge(
            f"state key of {len(key.encode())} bytes exceeds the limit of {MAX_KEY_BYTES} bytes"
        )


async def _call(op: str, key: str, value: Any = None, ttl: float | None = None) -> Any:
    _check_key(key)
    if _client is None:
        raise StateUnavailable("rrproxy.state works inside an rrproxy worker only")
    return await _client.request(op, key, value, ttl)


async def get(key: str) -> Any:
    return _decode(await _call("get", key))


async def set(key: str, value: Any, ttl: float | None = None) -> None:
    await _call("set", key, _encode(value), ttl)


async def delete(key: str) -> bool:
    return bool(await _call("delete", key))


async def incr(key: str, by: int = 1) -> int:
    return int(await _call("incr", key, by))


async def expire(key: str, ttl: float) -> bool:
    return bool(await _call("expire", key, None, ttl))
