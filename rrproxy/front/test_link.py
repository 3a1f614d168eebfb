"""WorkerLink after the handshake (fake_link.Harness drives the worker's end of a real
channel): every message a ready worker may send, and what a worker that breaks the
protocol gets. The handshake and the channel's end are in test_link_lifecycle.py."""

from __future__ import annotations

import math
import socket
from typing import Any

import pytest
import trio
import trio.testing

from ..ipc.messages import (
    LATENCY_BUCKETS,
    PROTOCOL_VERSION,
    Hello,
    Load,
    Message,
    NewConn,
    Ready,
    Rejected,
    Retire,
    StateRequest,
    Stats,
    Taken,
    UserMessage,
)
from .fake_link import Harness, linked, open_fd_count
from .link import MAX_BREACHES

# --- a ready worker's messages ----------------------------------------------------------


async def test_taken_updates_the_count_and_tells_the_dispatcher() -> None:
    async with linked(Harness()) as h:
        assert not h.worker.had_clients
        await h.send(Taken(17, 5))
        assert h.calls == [("taken", 17)]
        assert h.worker.connections_active == 5
        assert h.worker.had_clients


async def test_load_updates_the_count_and_tells_the_dispatcher() -> None:
    async with linked(Harness()) as h:
        await h.send(Load(9))
        assert h.worker.connections_active == 9
        assert h.calls == [("load", -1)]
        await h.send(Load(0))
        assert h.worker.connections_active == 0


async def test_load_without_handoff_is_fine() -> None:
    async with linked(Harness(handoff=False)) as h:
        await h.send(Load(4))
        assert h.worker.connections_active == 4
        assert h.retired == []


async def test_rejected_goes_to_the_dispatcher() -> None:
    async with linked(Harness()) as h:
        await h.send(Rejected(8))
        assert h.calls == [("rejected", 8)]
        assert h.retired == []


async def test_stats_update_every_counter() -> None:
    async with linked(Harness()) as h:
        counts = [0] * (len(LATENCY_BUCKETS) + 1)
        counts[3] = 40
        counts[-1] = 2
        await h.send(Stats(100, 7, 250, {"200": 240, "404": 9, "503": 1}, counts, 12.5))
        worker = h.worker
        assert worker.connections_total == 100
        assert worker.connections_active == 7
        assert worker.requests_total == 250
        assert worker.statuses == {200: 240, 404: 9, 503: 1}
        assert worker.latency_counts == counts
        assert worker.latency_sum == 12.5
        assert worker.stats_received == 1
        assert worker.rate_samples[-1][1] == 250
        # An empty histogram leaves the last one in place.
        await h.send(Stats(101, 6, 251, {"200": 241}))
        assert worker.latency_counts == counts
        assert worker.statuses == {200: 241}
        assert worker.stats_received == 2
        assert h.retired == []


async def test_every_message_counts_as_a_heartbeat(
    autojump_clock: trio.testing.MockClock,
) -> None:
    async with linked(Harness()) as h:
        await trio.sleep(10)
        before = h.worker.last_heard
        await h.send(Load(1))
        assert h.worker.last_heard == pytest.approx(before + 10)


async def test_retire_is_passed_on_and_its_reason_bounded() -> None:
    async with linked(Harness()) as h:
        await h.send(Retire("max requests reached"))
        await h.send(Retire("x" * 5000))
        assert h.retired == ["max requests reached", "x" * 500]
        assert h.worker.failure is None  # asking to be replaced is no breach


async def test_state_requests_and_user_messages_are_passed_on() -> None:
    async with linked(Harness()) as h:
        request = StateRequest(1, "incr", "hits", 1)
        await h.send(request)
        assert h.state_requests == [request]
        for to in ("front", "all", "1", "999999"):
            await h.send(UserMessage({"n": 1}, to=to))
        assert [m.to for m in h.user_messages] == ["front", "all", "1", "999999"]
        assert h.retired == []


# --- breaches after ready -----------------------------------------------------------------


def _latency(size: int) -> list[Any]:
    return [0] * size


BAD_STATS = [
    (Stats(-1, 0, 0), "connections_total out of range"),
    (Stats(0, -1, 0), "open connections out of range"),
    (Stats(0, 10001, 0), "open connections out of range"),
    (Stats(0, 0, 2**63), "requests_total out of range"),
    (Stats(1, 1, 1, {"200": -1}), "malformed status counts"),
    (Stats(1, 1, 1, {"200": 1.5}), "malformed status counts"),
    (Stats(1, 1, 1, {"200": True}), "malformed status counts"),
    (Stats(1, 1, 1, {"099": 1}), "malformed status counts"),
    (Stats(1, 1, 1, {"2000": 1}), "malformed status counts"),
    (Stats(1, 1, 1, {"\u00b2\u00b2\u00b2": 1}), "malformed status counts"),
    (Stats(1, 1, 1, {}, _latency(len(LATENCY_BUCKETS))), "malformed latency histogram"),
    (Stats(1, 1, 1, {}, [-1, *_latency(len(LATENCY_BUCKETS))]), "malformed latency"),
    (Stats(1, 1, 1, {}, ["1", *_latency(len(LATENCY_BUCKETS))]), "malformed latency"),
    (Stats(1, 1, 1, {}, [], -0.5), "latency sum out of range"),
    (Stats(1, 1, 1, {}, [], 1e15), "latency sum out of range"),
    # JSON has no NaN or infinity: the message does not even decode.
    (Stats(1, 1, 1, {}, [], math.nan), "Stats: body is not JSON"),
    (Stats(1, 1, 1, {}, [], math.inf), "Stats: body is not JSON"),
]


@pytest.mark.parametrize(("stats", "why"), BAD_STATS)
async def test_bad_stats_are_a_breach_and_change_nothing(stats: Stats, why: str) -> None:
    async with linked(Harness()) as h:
        await h.send(Stats(5, 1, 9, {"200": 9}))
        await h.send(stats)
        assert len(h.retired) == 1 and why in h.retired[0]
        assert h.worker.failure is not None and why in h.worker.failure
        worker = h.worker
        assert (worker.connections_total, worker.connections_active) == (5, 1)
        assert worker.requests_total == 9
        assert worker.statuses == {200: 9}
        assert worker.stats_received == 1
        assert not h.process.killed
        # The link goes on reading: a retiring worker still drains.
        await h.send(Taken(1, 0))
        assert h.calls == [("taken", 1)]


@pytest.mark.parametrize(
    ("message", "why"),
    [
        (UserMessage("hi", to="0"), "user message to '0'"),
        (UserMessage("hi", to="1234567"), "user message to"),
        (UserMessage("hi", to="workers"), "user message to"),
        (Hello(PROTOCOL_VERSION, 1), "unexpected Hello"),
        (Ready(), "unexpected Ready"),
        (NewConn(1), "unexpected NewConn"),
    ],
)
async def test_out_of_place_messages_are_a_breach(message: Message, why: str) -> None:
    async with linked(Harness()) as h:
        await h.send(message)
        assert len(h.retired) == 1 and why in h.retired[0]
        assert h.user_messages == [] and not h.process.killed


@pytest.mark.parametrize("message", [Taken(1, 10001), Load(10001), Load(2**32 - 1)])
async def test_an_impossible_count_of_open_connections_is_a_breach(message: Message) -> None:
    # Counted against --max-connections (10000 here) for every worker: a worker that
    # claimed it holds them all would stop the front handing connections to anyone.
    async with linked(Harness()) as h:
        await h.send(message)
        assert len(h.retired) == 1 and "open connections out of range" in h.retired[0]
        assert h.worker.connections_active == 0
        assert h.calls == []


@pytest.mark.parametrize("message", [Taken(1, 1), Rejected(1)])
async def test_handoff_answers_without_handoff_are_a_breach(message: Message) -> None:
    async with linked(Harness(handoff=False)) as h:
        await h.send(message)
        assert len(h.retired) == 1 and "policy without handoff" in h.retired[0]
        assert h.worker.connections_active == 0


async def test_an_fd_from_a_worker_is_refused_and_closed() -> None:
    async with linked(Harness()) as h:
        left, right = socket.socketpair()
        before = open_fd_count()
        await h.peer.send(Load(1), [left.fileno()])
        await trio.testing.wait_all_tasks_blocked()
        assert len(h.retired) == 1 and "arrived with 1 fds" in h.retired[0]
        assert open_fd_count() == before  # the copy the front received is closed
        assert h.worker.connections_active == 0
        left.close()
        right.close()


async def test_garbage_after_ready_is_a_breach() -> None:
    async with linked(Harness()) as h:
        await h.send_raw(b"\xfe")
        await h.send_raw(b"\x02short")  # a Taken with the wrong size
        assert len(h.retired) == 1  # retired once, not once per breach
        assert "unknown message tag" in h.retired[0]
        assert not h.process.killed


async def test_a_flood_of_breaches_kills_the_worker() -> None:
    h = Harness()
    async with trio.open_nursery() as nursery:
        nursery.start_soon(h.run)
        await h.handshake()
        for _ in range(MAX_BREACHES - 1):
            await h.send_raw(b"\xfe")
        assert not h.process.killed and not h.finished
        await h.send_raw(b"\xfe")
        assert h.process.killed and h.finished
    assert len(h.retired) == 1
    h.close()
