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
from typing import Any

from .backend import (
    StateBackend,
    StateError,
    StateFull,
    StateKeyTooLarge,
    StateUnavailable,
    StateValueTooLarge,
)
from .front import TIMEOUT, FrontBackend
from .memory import MAX_KEY_BYTES, MAX_VALUE_BYTES

_client: StateBackend | None = None


def install(backend: StateBackend | None) -> None:
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
    """The value stored at `key`, or None when it is missing or expired."""
    return _decode(await _call("get", key))


async def set(key: str, value: Any, ttl: float | None = None) -> None:
    """Store `value` (bytes, str or JSON-compatible) at `key`, expiring after `ttl`
    seconds when given. Raises StateFull at --state-max-memory."""
    await _call("set", key, _encode(value), ttl)


async def delete(key: str) -> bool:
    """Remove `key`; whether it existed."""
    return bool(await _call("delete", key))


async def incr(key: str, by: int = 1) -> int:
    """Add `by` to the integer at `key` (a missing key counts as 0), atomically across
    every worker; the new value."""
    return int(await _call("incr", key, by))


async def expire(key: str, ttl: float) -> bool:
    """Make `key` expire `ttl` seconds from now; whether it existed."""
    return bool(await _call("expire", key, None, ttl))


__all__ = [
    "TIMEOUT",
    "FrontBackend",
    "StateBackend",
    "StateError",
    "StateFull",
    "StateKeyTooLarge",
    "StateUnavailable",
    "StateValueTooLarge",
    "delete",
    "expire",
    "get",
    "incr",
    "install",
    "set",
]
