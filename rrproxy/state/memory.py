"""The in-memory state store the front holds for `--state memory` (the default).

Pure logic with an injectable clock: the front serialises every operation, so each
one (incr included) is atomic across workers. Values are the tagged form the workers
send ({"t": "json"|"bytes", "v": ...}), kept as their compact JSON encoding: that is
what the memory limit counts, and a nested list costs its encoded size, not the 24x
that Python objects would take.

Expiry uses a heap of deadlines (Redis's lazy + active expiry): a key is checked
when it is read, and `sweep()` pops the deadlines that have passed, so its work is
proportional to what expires, never to the number of keys.
"""

from __future__ import annotations

import heapq
import json
import time
from collections.abc import Callable
from typing import Any

OPS = ("get", "set", "delete", "incr", "expire")
#: Bounds a worker cannot exceed (checked again here: never trust the sender).
MAX_KEY_BYTES = 1024
MAX_VALUE_BYTES = 128 * 1024
MAX_KEYS = 1_000_000
#: Default --state-max-memory.
DEFAULT_MAX_BYTES = 256 * 1024 * 1024
#: Bookkeeping counted per key on top of its key and value bytes (dict slot, tuple,
#: object headers), so a flood of tiny keys is bounded too.
ENTRY_OVERHEAD = 128
#: Deadlines one sweep() may pop: a burst of expiries is spread over several ticks.
SWEEP_BATCH = 10_000


class StoreError(Exception):
    """The operation cannot be done (wrong type, limit); the message goes back.
    `kind` is "full" when the store is at its memory or key limit."""

    def __init__(self, message: str, kind: str = "") -> None:
        super().__init__(message)
        self.kind = kind


def _encode(value: Any) -> bytes:
    try:
        return json.dumps(value, separators=(",", ":")).encode()
    except (TypeError, ValueError, RecursionError):
        raise StoreError("state values are JSON-compatible") from None


class MemoryStore:
    """Keys to tagged values with optional deadlines, within `max_bytes` and
    `max_keys`; `clock` gives the time deadlines are measured in."""

    def __init__(
        self,
        clock: Callable[[], float] = time.monotonic,
        max_bytes: int = DEFAULT_MAX_BYTES,
        max_keys: int = MAX_KEYS,
    ) -> None:
        self.clock = clock
        self.max_bytes = max_bytes
        self.max_keys = max_keys
        #: key -> (encoded value, deadline or None)
        self._data: dict[str, tuple[bytes, float | None]] = {}
        #: (deadline, key) for every deadline set; entries whose key has since been
        #: deleted or given another deadline are skipped when popped.
        self._deadlines: list[tuple[float, str]] = []
        self.used_bytes = 0

    def __len__(self) -> int:
        return len(self._data)

    @staticmethod
    def _cost(key: str, encoded: bytes) -> int:
        return len(key.encode()) + len(encoded) + ENTRY_OVERHEAD

    def _live(self, key: str) -> tuple[bytes, float | None] | None:
        item = self._data.get(key)
        if item is None:
            return None
        expires = item[1]
        if expires is not None and expires <= self.clock():
            self._remove(key)
            return None
        return item

    def _remove(self, key: str) -> bool:
        item = self._data.pop(key, None)
        if item is None:
            return False
        self.used_bytes -= self._cost(key, item[0])
        return True

    def _store(self, key: str, encoded: bytes, expires: float | None) -> None:
        old = self._data.get(key)
        cost = self._cost(key, encoded)
        used = self.used_bytes + cost - (self._cost(key, old[0]) if old is not None else 0)
        if old is None and len(self._data) >= self.max_keys:
            raise StoreError(f"the memory store holds its limit of {self.max_keys} keys", "full")
        if used > self.max_bytes and (old is None or cost > self._cost(key, old[0])):
            raise StoreError(
                f"the memory store is full ({self.used_bytes} of {self.max_bytes} bytes, "
                "--state-max-memory)",
                "full",
            )
        self._data[key] = (encoded, expires)
        self.used_bytes = used
        if expires is not None:
            heapq.heappush(self._deadlines, (expires, key))
            if len(self._deadlines) > 2 * len(self._data) + 1024:
                self._rebuild_deadlines()

    def _rebuild_deadlines(self) -> None:
        self._deadlines = [(exp, key) for key, (_, exp) in self._data.items() if exp is not None]
        heapq.heapify(self._deadlines)

    def apply(self, op: str, key: str, value: Any = None, ttl: float | None = None) -> Any:
        """One operation from a worker (see StateBackend.request), validated again
        here; StoreError for anything refused. `expire` without a ttl removes the
        deadline."""
        if op not in OPS:
            raise StoreError(f"unknown operation {op!r}")
        try:
            key_bytes = len(key.encode()) if isinstance(key, str) else MAX_KEY_BYTES + 1
        except UnicodeEncodeError:
            raise StoreError("keys are valid Unicode strings") from None
        if key_bytes > MAX_KEY_BYTES:
            raise StoreError(f"keys are strings of at most {MAX_KEY_BYTES} bytes")
        if ttl is not None and (
            not isinstance(ttl, int | float) or isinstance(ttl, bool) or not 0 < ttl < 1e9
        ):
            raise StoreError("ttl must be a positive number of seconds")
        if op == "get":
            item = self._live(key)
            return None if item is None else json.loads(item[0])
        if op == "delete":
            return self._live(key) is not None and self._remove(key)
        if op == "expire":
            item = self._live(key)
            if item is None:
                return False
            self._store(key, item[0], None if ttl is None else self.clock() + ttl)
            return True
        if op == "set":
            encoded = _encode(value)
            if len(encoded) > MAX_VALUE_BYTES + 64:
                raise StoreError(f"state values are at most {MAX_VALUE_BYTES} bytes encoded")
            self._store(key, encoded, None if ttl is None else self.clock() + ttl)
            return True
        # incr: `value` is the step; a missing key counts from 0.
        if not isinstance(value, int) or isinstance(value, bool):
            raise StoreError("incr takes an integer step")
        item = self._live(key)
        current = 0
        expires = None
        if item is not None:
            stored = json.loads(item[0])
            expires = item[1]
            if not (
                isinstance(stored, dict)
                and stored.get("t") == "json"
                and isinstance(stored.get("v"), int)
                and not isinstance(stored["v"], bool)
            ):
                raise StoreError(f"the value of {key!r} is not an integer")
            current = stored["v"]
        current += value
        if abs(current) >= 2**63:
            raise StoreError("incr would leave the 64-bit integer range")
        self._store(key, _encode({"t": "json", "v": current}), expires)
        return current

    def sweep(self, limit: int = SWEEP_BATCH) -> int:
        """Drop keys whose deadline has passed (at most `limit` deadlines popped);
        returns how many keys went."""
        now = self.clock()
        deadlines = self._deadlines
        removed = 0
        for _ in range(limit):
            if not deadlines or deadlines[0][0] > now:
                break
            expires, key = heapq.heappop(deadlines)
            item = self._data.get(key)
            if item is not None and item[1] == expires:
                self._remove(key)
                removed += 1
        return removed
