"""The in-memory state store the front holds for `--state memory` (the default).

Pure logic with an injectable clock: the front serialises every operation, so each
one (incr included) is atomic across workers. Values are stored as the tagged form
the workers send ({"t": "json"|"bytes", "v": ...}); incr works on JSON integers.
"""

from __future__ import annotations

import time
from collections.abc import Callable
from typing import Any

OPS = ("get", "set", "delete", "incr", "expire")
#: Bounds a worker cannot exceed (checked again here: never trust the sender).
MAX_KEY_BYTES = 1024
MAX_VALUE_BYTES = 128 * 1024
MAX_KEYS = 1_000_000


class StoreError(Exception):
    """The operation cannot be done (wrong type, limit); the message goes back."""


class MemoryStore:
    def __init__(self, clock: Callable[[], float] = time.monotonic) -> None:
        self.clock = clock
        self._data: dict[str, tuple[Any, float | None]] = {}

    def __len__(self) -> int:
        return len(self._data)

    def _live(self, key: str) -> tuple[Any, float | None] | None:
        item = self._data.get(key)
        if item is None:
            return None
        expires = item[1]
        if expires is not None and expires <= self.clock():
            del self._data[key]
            return None
        return item

    def apply(self, op: str, key: str, value: Any = None, ttl: float | None = None) -> Any:
        if op not in OPS:
            raise StoreError(f"unknown operation {op!r}")
        if not isinstance(key, str) or len(key.encode()) > MAX_KEY_BYTES:
            raise StoreError(f"keys are strings of at most {MAX_KEY_BYTES} bytes")
        if ttl is not None and (not isinstance(ttl, int | float) or ttl <= 0):
            raise StoreError("ttl must be a positive number of seconds")
        if op == "get":
            item = self._live(key)
            return None if item is None else item[0]
        if op == "delete":
            return self._data.pop(key, None) is not None
        if op == "expire":
            item = self._live(key)
            if item is None:
                return False
            self._data[key] = (item[0], None if ttl is None else self.clock() + ttl)
            return True
        if op == "set":
            if len(self._data) >= MAX_KEYS and key not in self._data:
                raise StoreError(f"the memory store holds its limit of {MAX_KEYS} keys")
            self._data[key] = (value, None if ttl is None else self.clock() + ttl)
            return True
        # incr: `value` is the step; a missing key counts from 0.
        if not isinstance(value, int) or isinstance(value, bool):
            raise StoreError("incr takes an integer step")
        item = self._live(key)
        current = 0
        expires = None
        if item is not None:
            stored, expires = item
            if not (
                isinstance(stored, dict)
                and stored.get("t") == "json"
                and isinstance(stored.get("v"), int)
                and not isinstance(stored["v"], bool)
            ):
                raise StoreError(f"the value of {key!r} is not an integer")
            current = stored["v"]
        current += value
        self._data[key] = ({"t": "json", "v": current}, expires)
        return current

    def sweep(self) -> int:
        """Drop expired keys; returns how many."""
        now = self.clock()
        dead = [
            k for k, (_, expires) in self._data.items() if expires is not None and expires <= now
        ]
        for key in dead:
            del self._data[key]
        return len(dead)
