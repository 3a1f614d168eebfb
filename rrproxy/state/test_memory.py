from __future__ import annotations

import pytest

from .memory import MAX_KEY_BYTES, MemoryStore, StoreError


class Clock:
    def __init__(self) -> None:
        self.now = 100.0

    def __call__(self) -> float:
        return self.now


def j(value: object) -> dict[str, object]:
    return {"t": "json", "v": value}


def test_set_get_delete_and_ttl() -> None:
    clock = Clock()
    store = MemoryStore(clock)
    assert store.apply("get", "a") is None
    store.apply("set", "a", j("x"), ttl=10)
    assert store.apply("get", "a") == j("x")
    clock.now += 9.9
    assert store.apply("get", "a") == j("x")
    clock.now += 0.2
    assert store.apply("get", "a") is None
    store.apply("set", "b", j(1))
    assert store.apply("delete", "b") is True
    assert store.apply("delete", "b") is False


def test_incr_is_counted_from_zero_and_keeps_ttl() -> None:
    clock = Clock()
    store = MemoryStore(clock)
    assert store.apply("incr", "n", 1) == 1
    assert store.apply("incr", "n", 41) == 42
    assert store.apply("expire", "n", ttl=5) is True
    assert store.apply("incr", "n", -2) == 40
    clock.now += 6
    assert store.apply("incr", "n", 1) == 1  # expired: a new counter


def test_errors_are_clear() -> None:
    store = MemoryStore(Clock())
    store.apply("set", "s", j("text"))
    with pytest.raises(StoreError, match="not an integer"):
        store.apply("incr", "s", 1)
    with pytest.raises(StoreError, match="keys are strings"):
        store.apply("get", "k" * (MAX_KEY_BYTES + 1))
    with pytest.raises(StoreError, match="unknown operation"):
        store.apply("flushall", "k")
    with pytest.raises(StoreError, match="ttl must be"):
        store.apply("set", "k", j(1), ttl=-1)
    with pytest.raises(StoreError, match="integer step"):
        store.apply("incr", "k", "1")


def test_sweep_drops_expired_keys() -> None:
    clock = Clock()
    store = MemoryStore(clock)
    for i in range(10):
        store.apply("set", f"k{i}", j(i), ttl=1 if i % 2 else None)
    clock.now += 2
    assert store.sweep() == 5
    assert len(store) == 5
