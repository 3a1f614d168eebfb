"""RedisBackend without Redis: over fake streams (a tiny in-memory Redis that records
every command) on trio's mock clock. The URL and the codecs on plain values are in
test_redis_codec.py; the real server is tests/e2e/test_state_redis.py."""

from __future__ import annotations

import math
from collections.abc import Awaitable, Callable
from typing import Any

import pytest
import trio
import trio.testing

from .backend import StateError, StateUnavailable
from .fake_redis import client
from .redis import (
    BACKOFF_INITIAL,
    BACKOFF_MAX,
    CONNECT_TIMEOUT,
    POOL_SIZE,
    RedisBackend,
)
from .test_redis_codec import j

# --- RedisBackend ------------------------------------------------------------------------------


async def test_each_operation_sends_its_command(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.delenv("RRPROXY_REDIS_PASSWORD", raising=False)
    redis, server, backend = client()
    assert await redis.request("set", "k", j({"a": 1})) is True
    assert await redis.request("set", "t", j("x"), ttl=1.5) is True
    assert await redis.request("set", "tiny", j(1), ttl=0.0001) is True
    assert await redis.request("get", "k") == j({"a": 1})
    assert await redis.request("get", "missing") is None
    assert await redis.request("incr", "n", 5) == 5
    assert await redis.request("incr", "n", -2) == 3
    assert await redis.request("get", "n") == j(3)
    assert await redis.request("expire", "k", ttl=2) is True
    assert await redis.request("expire", "missing", ttl=0) is False
    assert await redis.request("delete", "k") is True
    assert await redis.request("delete", "k") is False
    assert server.sent() == [
        [b"SET", b"k", b'j{"a":1}'],
        [b"SET", b"t", b'j"x"', b"PX", b"1500"],
        [b"SET", b"tiny", b"1", b"PX", b"1"],  # never 0 (Redis refuses it)
        [b"GET", b"k"],
        [b"GET", b"missing"],
        [b"INCRBY", b"n", b"5"],
        [b"INCRBY", b"n", b"-2"],
        [b"GET", b"n"],
        [b"PEXPIRE", b"k", b"2000"],
        [b"PEXPIRE", b"missing", b"1"],
        [b"DEL", b"k"],
        [b"DEL", b"k"],
    ]
    assert backend.opened == [("cache", 6379, None)]


async def test_sequential_calls_reuse_one_connection() -> None:
    redis, server, _ = client()
    for i in range(20):
        await redis.request("set", f"k{i}", j(i))
    assert server.connects == 1


async def test_replies_arriving_in_pieces_are_put_together() -> None:
    redis, server, _ = client()
    server.chunk = 1
    value = j({"text": "x" * 300})
    await redis.request("set", "k", value)
    assert await redis.request("get", "k") == value


async def test_auth_and_select_on_connect(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.delenv("RRPROXY_REDIS_PASSWORD", raising=False)
    redis, server, backend = client("rediss://app:pw@cache:7000/2")
    await redis.request("get", "k")
    await redis.request("get", "k")
    assert server.sent() == [
        [b"AUTH", b"app", b"pw"],
        [b"SELECT", b"2"],
        [b"GET", b"k"],
        [b"GET", b"k"],
    ]
    assert backend.opened == [("cache", 7000, "cache")]  # TLS, checked against the host
    redis, server, _ = client("redis://:pw@cache")
    await redis.request("get", "k")
    assert server.sent() == [[b"AUTH", b"pw"], [b"GET", b"k"]]


async def test_a_refused_password_is_a_state_error() -> None:
    redis, server, _ = client("redis://:wrong@cache")
    server.password = b"right"
    with pytest.raises(StateError, match="redis: WRONGPASS"):
        await redis.request("get", "k")


async def test_a_refused_password_closes_the_connection() -> None:
    redis, server, _ = client("redis://:wrong@cache")
    server.password = b"right"
    with pytest.raises(StateError):
        await redis.request("get", "k")
    assert [stream.closed for stream in server.streams] == [True]


async def test_an_error_reply_is_a_state_error_and_the_connection_is_kept() -> None:
    redis, server, _ = client()
    await redis.request("set", "s", j("text"))
    with pytest.raises(StateError) as caught:
        await redis.request("incr", "s", 1)
    assert not isinstance(caught.value, StateUnavailable)
    assert str(caught.value) == (
        "the value of 's' is not an integer (redis: ERR value is not an integer or out of range)"
    )
    assert await redis.request("get", "s") == j("text")
    assert server.connects == 1


async def test_a_value_written_by_someone_else_is_refused() -> None:
    redis, server, _ = client()
    server.data[b"foreign"] = b"hello"
    with pytest.raises(StateError, match="not in rrproxy's format"):
        await redis.request("get", "foreign")


async def test_an_unknown_operation_is_refused_without_a_round_trip() -> None:
    redis, server, _ = client()
    with pytest.raises(StateError, match="unknown operation 'flushall'"):
        await redis.request("flushall", "k")
    assert server.connects == 0


def incrementer(redis: RedisBackend) -> tuple[list[int], Callable[[], Awaitable[None]]]:
    """A call that increments "n", and the list of the values it got back."""
    results: list[int] = []

    async def call() -> None:
        results.append(await redis.request("incr", "n", 1))

    return results, call


async def test_concurrent_calls_share_a_bounded_pool(
    autojump_clock: trio.testing.MockClock,
) -> None:
    redis, server, _ = client()
    server.delay = 0.01
    results: dict[int, Any] = {}

    async def call(i: int) -> None:
        results[i] = await redis.request("incr", "n", 1)

    async with trio.open_nursery() as nursery:
        for i in range(POOL_SIZE):
            nursery.start_soon(call, i)
    assert sorted(results.values()) == list(range(1, POOL_SIZE + 1))
    assert server.connects == POOL_SIZE
    # Later calls reuse those connections.
    await redis.request("get", "n")
    assert server.connects == POOL_SIZE


async def test_more_callers_than_connections_all_get_an_answer(
    autojump_clock: trio.testing.MockClock,
) -> None:
    redis, server, _ = client()
    server.delay = 0.01
    count = POOL_SIZE + 2
    results, call = incrementer(redis)

    with trio.move_on_after(60):
        async with trio.open_nursery() as nursery:
            for _ in range(count):
                nursery.start_soon(call)
    assert sorted(results) == list(range(1, count + 1))


async def test_a_cancelled_waiter_leaves_the_queue_and_the_rest_are_served(
    autojump_clock: trio.testing.MockClock,
) -> None:
    redis, server, _ = client()
    server.delay = 0.01
    results, call = incrementer(redis)

    with trio.fail_after(60):
        async with trio.open_nursery() as nursery:
            for _ in range(POOL_SIZE):
                nursery.start_soon(call)
            await trio.testing.wait_all_tasks_blocked()
            with trio.CancelScope() as doomed:
                doomed.cancel()
                await redis.request("get", "n")
            nursery.start_soon(call)
            nursery.start_soon(call)
    assert sorted(results) == list(range(1, POOL_SIZE + 3))
    assert redis._slots.free == POOL_SIZE


async def test_a_call_cancelled_midway_closes_its_connection(
    autojump_clock: trio.testing.MockClock,
) -> None:
    # Its reply may still arrive: left in the pool, the next caller would read the
    # cancelled call's answer as its own.
    redis, server, _ = client()
    await redis.request("set", "k", j(1))
    server.delay = 1.0
    with trio.move_on_after(0.5):
        await redis.request("incr", "n", 1)
    (first,) = server.streams
    assert first.closed
    server.delay = 0.0
    assert await redis.request("get", "k") == j(1)
    assert server.connects == 2
    assert redis._slots.free == POOL_SIZE


async def test_a_connect_cancelled_during_auth_closes_the_stream(
    autojump_clock: trio.testing.MockClock,
) -> None:
    redis, server, _ = client("redis://:pw@cache")
    server.delay = 1.0
    with trio.move_on_after(0.5):
        await redis.request("get", "k")
    assert [stream.closed for stream in server.streams] == [True]


async def test_one_more_caller_than_connections_waits_for_a_slot(
    autojump_clock: trio.testing.MockClock,
) -> None:
    redis, server, _ = client()
    server.delay = 0.01
    count = POOL_SIZE + 1
    results, call = incrementer(redis)

    with trio.fail_after(60):
        async with trio.open_nursery() as nursery:
            for _ in range(count):
                nursery.start_soon(call)
    assert sorted(results) == list(range(1, count + 1))
    assert server.connects == POOL_SIZE


async def test_a_pooled_connection_that_died_is_replaced_once() -> None:
    redis, server, _ = client()
    await redis.request("set", "k", j(1))
    (stale,) = server.streams
    stale.dropped = True  # Redis restarted
    assert await redis.request("get", "k") == j(1)
    assert server.connects == 2
    assert stale.closed
    assert not server.streams[1].closed


async def test_garbage_from_the_server_makes_it_unavailable() -> None:
    redis, server, _ = client()
    with pytest.raises(StateUnavailable, match="redis is unreachable"):
        await redis._execute("GARBAGE")
    assert server.streams[0].closed


async def test_an_unreachable_server_fails_fast_and_backs_off(
    autojump_clock: trio.testing.MockClock,
) -> None:
    redis, server, _ = client()
    server.refuse = ConnectionRefusedError(111, "Connection refused")
    with pytest.raises(StateUnavailable, match=r"^redis is unreachable: .*Connection refused"):
        await redis.request("get", "k")
    assert server.connects == 1
    # Within the backoff, calls fail at once without trying.
    with pytest.raises(StateUnavailable, match=r"\(retrying\)"):
        await redis.request("get", "k")
    assert server.connects == 1
    await trio.sleep(BACKOFF_INITIAL)
    with pytest.raises(StateUnavailable, match="Connection refused"):
        await redis.request("get", "k")
    assert server.connects == 2
    # The delay doubles: 0.2 s now.
    await trio.sleep(BACKOFF_INITIAL * 1.5)
    with pytest.raises(StateUnavailable, match=r"\(retrying\)"):
        await redis.request("get", "k")
    await trio.sleep(BACKOFF_INITIAL)
    with pytest.raises(StateUnavailable, match="Connection refused"):
        await redis.request("get", "k")
    assert server.connects == 3
    # ... up to BACKOFF_MAX.
    for _ in range(int(math.log2(BACKOFF_MAX / BACKOFF_INITIAL)) + 3):
        await trio.sleep(BACKOFF_MAX)
        with pytest.raises(StateUnavailable):
            await redis.request("get", "k")
    attempts = server.connects
    await trio.sleep(BACKOFF_MAX * 0.99)
    with pytest.raises(StateUnavailable, match=r"\(retrying\)"):
        await redis.request("get", "k")
    await trio.sleep(BACKOFF_MAX * 0.02)
    with pytest.raises(StateUnavailable, match="Connection refused"):
        await redis.request("get", "k")
    assert server.connects == attempts + 1
    # Back up: the next attempt after the delay works, and the delay starts over.
    server.refuse = None
    await trio.sleep(BACKOFF_MAX)
    assert await redis.request("get", "k") is None
    server.refuse = OSError("down again")
    for stream in server.streams:
        stream.dropped = True
    with pytest.raises(StateUnavailable, match="down again"):
        await redis.request("get", "k")
    await trio.sleep(BACKOFF_INITIAL)
    server.refuse = None
    assert await redis.request("get", "k") is None


async def test_a_server_that_does_not_accept_times_out(
    autojump_clock: trio.testing.MockClock,
) -> None:
    redis, server, _ = client()
    server.silent = True
    start = trio.current_time()
    with pytest.raises(StateUnavailable, match=f"no connection within {CONNECT_TIMEOUT:g} s"):
        await redis.request("get", "k")
    assert trio.current_time() - start == pytest.approx(CONNECT_TIMEOUT)


async def test_a_server_that_does_not_answer_times_out(
    autojump_clock: trio.testing.MockClock,
) -> None:
    redis, server, _ = client()
    await redis.request("set", "k", j(1))
    server.silent = True
    start = trio.current_time()
    with pytest.raises(StateUnavailable, match="redis is unreachable"):
        await redis.request("get", "k")
    # The pooled connection, then one fresh connection attempt.
    assert trio.current_time() - start == pytest.approx(CONNECT_TIMEOUT * 2 + CONNECT_TIMEOUT)
    assert server.streams[0].closed
