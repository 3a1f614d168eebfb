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
import itertools
import json
from typing import Any

import trio

from .state_store import MAX_KEY_BYTES, MAX_VALUE_BYTES

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


class _Client:
    """The worker's end: requests over the worker's channel, replies matched by id."""

    def __init__(self, send: Any) -> None:
        self._send = send
        self._ids = itertools.count(1)
        self._pending: dict[int, list[Any]] = {}

    async def request(self, op: str, key: str, value: Any = None, ttl: float | None = None) -> Any:
        request_id = next(self._ids)
        slot: list[Any] = [trio.Event(), None, None]
        self._pending[request_id] = slot
        try:
            with trio.move_on_after(TIMEOUT):
                try:
                    await self._send(request_id, op, key, value, ttl)
                except Exception as exc:
                    raise StateUnavailable(f"state store unreachable: {exc}") from None
                await slot[0].wait()
            if not slot[0].is_set():
                raise StateUnavailable(f"state store did not answer within {TIMEOUT:g} s")
        finally:
            self._pending.pop(request_id, None)
        ok, result = slot[1], slot[2]
        if not ok:
            raise StateError(result)
        return result

    def reply(self, request_id: int, ok: bool, value: Any, error: str) -> None:
        slot = self._pending.get(request_id)
        if slot is not None:
            slot[1], slot[2] = ok, (value if ok else error)
            slot[0].set()

    def fail_all(self, why: str) -> None:
        for slot in self._pending.values():
            slot[1], slot[2] = False, why
            slot[0].set()


_client: _Client | None = None


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
