"""The StateBackend protocol every rrproxy.state store implements, and its errors.

Kept apart from the public functions so both backends (front.py, redis.py) and the
worker's connection code can import the errors without importing each other.
"""

from __future__ import annotations

from typing import Any, Protocol


class StateError(Exception):
    """The store refused the operation (e.g. incr on a value that is not a number)."""


class StateUnavailable(StateError):
    """The store cannot be reached; the request is answered 503."""


class StateKeyTooLarge(StateError, ValueError):
    """The key is over MAX_KEY_BYTES encoded; refused in the worker, before any call."""


class StateValueTooLarge(StateError, ValueError):
    """The value is over MAX_VALUE_BYTES in its tagged JSON form; refused in the
    worker, before any call."""


class StateFull(StateError):
    """The store is at its memory or key limit (--state-max-memory): the value was
    not stored. A handler may catch it and answer 507 or 503; uncaught, the request
    is answered 507 Insufficient Storage."""


class StateBackend(Protocol):
    """Where rrproxy.state's operations go: the front's memory store (`front.py`) or
    Redis (`redis.py`). `value` arrives in the tagged form of `codec.py`; `ttl` in
    seconds. Raises StateUnavailable when the store cannot be reached, StateFull at
    its limit, and StateError for anything else it refuses."""

    async def request(self, op: str, key: str, value: Any = None, ttl: float | None = None) -> Any:
        """Do `op` ("get", "set", "delete", "incr" or "expire") on `key`: for get the
        tagged value or None, for incr the new integer, for the others whether it
        took effect. `value` is the tagged value for set, the step for incr."""
