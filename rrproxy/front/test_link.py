"""WorkerLink over a real channel (a SOCK_SEQPACKET socketpair), with the worker's end
driven from here: the handshake, every message a ready worker may send, and what a
worker that breaks the protocol gets. No worker process: a fake stands in for it."""

from __future__ import annotations

import json
import logging
import math
import os
import signal
import socket
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from typing import Any, cast

import pytest
import trio
import trio.testing

from ..config import Config, WorkerConfig
from ..ipc.channel import WorkerChannel, socketpair
from ..ipc.messages import (
    LATENCY_BUCKETS,
    PROTOCOL_VERSION,
    Configure,
    Failed,
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
from .dispatcher import Dispatcher
from .link import CHANNEL_EOF_GRACE, HELLO_TIMEOUT, MAX_BREACHES, WorkerLink
from .policies import RoundRobin
from .process import WorkerProcess


def _open_fds() -> int:
    return len(os.listdir("/proc/self/fd"))


class FakeProcess:
    """The worker process as WorkerProcess and WorkerLink use it."""

    def __init__(self) -> None:
        self.pid = 4242
        self.returncode: int | None = None
        self.signals: list[int] = []
        self._exited = trio.Event()

    async def wait(self) -> int:
        await self._exited.wait()
        assert self.returncode is not None
        return self.returncode

    def send_signal(self, signum: int) -> None:
        self.signals.append(signum)
        self.exit(-signum)

    def exit(self, code: int) -> None:
        self.returncode = code
        self._exited.set()

    @property
    def killed(self) -> bool:
        return signal.SIGKILL in self.signals


class RecordingDispatcher(Dispatcher):
    """Records what the link asks of the dispatcher."""

    def __init__(self) -> None:
        super().__init__(RoundRobin(), lambda: [], max_held=100)
        self.calls: list[tuple[str, int]] = []

    def taken(self, worker: WorkerProcess, conn_id: int) -> None:
        self.calls.append(("taken", conn_id))

    def rejected(self, worker: WorkerProcess, conn_id: int) -> None:
        self.calls.append(("rejected", conn_id))

    def load_changed(self) -> None:
        self.calls.append(("load", -1))


class Harness:
    def __init__(
        self,
        *,
        handoff: bool = True,
        listeners: list[socket.socket] | None = None,
        ready_timeout: float = 60.0,
    ) -> None:
        self.baseline = _open_fds()
        front_end, worker_end = socketpair()
        self.raw = worker_end  # for bytes no well-behaved worker sends
        self.process = FakeProcess()
        self.worker = WorkerProcess(
            3, cast(trio.Process, self.process), WorkerChannel(front_end, accepts_fds=False)
        )
        self.peer = WorkerChannel(worker_end)
        self.config = Config(
            WorkerConfig(app="app:handler", keep_alive=7.5, forwarded_allow_ips=("10.0.0.1",)),
            workers=2,
            ready_timeout=ready_timeout,
        )
        self.dispatcher = RecordingDispatcher() if handoff else None
        self.ready_calls: list[WorkerProcess] = []
        self.retired: list[str] = []
        self.user_messages: list[UserMessage] = []
        self.state_requests: list[StateRequest] = []
        self.link = WorkerLink(
            self.worker,
            self.config,
            listeners or [],
            self.dispatcher,
            on_ready=self.ready_calls.append,
            on_retire=lambda worker, reason: self.retired.append(reason),
            on_user_message=lambda worker, message: self.user_messages.append(message),
            on_state_request=lambda worker, message: self.state_requests.append(message),
            quiet_failures=lambda: False,
            worker_count=lambda: 2,
        )
        self.finished = False

    async def run(self) -> None:
        await self.link.run()
        self.finished = True

    async def send(self, message: Message) -> None:
        await self.peer.send(message)
        await trio.testing.wait_all_tasks_blocked()

    async def send_raw(self, data: bytes) -> None:
        self.raw.send(data)
        await trio.testing.wait_all_tasks_blocked()

    async def handshake(self) -> Configure:
        await self.peer.send(Hello(PROTOCOL_VERSION, self.process.pid))
        message, fds = await self.peer.receive()
        assert isinstance(message, Configure)
        assert fds == []
        await self.send(Ready())
        assert self.link.ready
        return message

    @property
    def calls(self) -> list[tuple[str, int]]:
        assert self.dispatcher is not None
        return self.dispatcher.calls

    def close(self) -> None:
        self.peer.close()
        self.worker.channel.close()
        assert _open_fds() == self.baseline, "a descriptor was left open"


@asynccontextmanager
async def linked(harness: Harness) -> AsyncIterator[Harness]:
    """The link running, its handshake done."""
    async with trio.open_nursery() as nursery:
        nursery.start_soon(harness.run)
        await harness.handshake()
        yield harness
        nursery.cancel_scope.cancel()
    harness.close()


# --- handshake ----------------------------------------------------------------------


async def test_hello_gets_configure_and_ready_reports_ready() -> None:
    h = Harness()
    async with trio.open_nursery() as nursery:
        nursery.start_soon(h.run)
        await h.peer.send(Hello(PROTOCOL_VERSION, h.process.pid))
        message, fds = await h.peer.receive()
        assert isinstance(message, Configure)
        assert fds == []
        assert message.worker_id == 3
        assert message.listeners == 0
        assert message.worker_count == 2
        # What the worker rebuilds its configuration from (tuples travel as lists).
        assert message.config == json.loads(json.dumps(h.config.worker.to_dict()))
        assert WorkerConfig.from_dict(message.config).keep_alive == 7.5
        await trio.testing.wait_all_tasks_blocked()
        assert not h.link.ready and h.ready_calls == []
        await h.send(Ready())
        assert h.link.ready
        assert h.ready_calls == [h.worker]
        assert not h.process.killed
        nursery.cancel_scope.cancel()
    h.close()


async def test_configure_carries_the_shared_listeners() -> None:
    listener = socket.socket()
    listener.bind(("127.0.0.1", 0))
    listener.listen()
    h = Harness(listeners=[listener])
    async with trio.open_nursery() as nursery:
        nursery.start_soon(h.run)
        await h.peer.send(Hello(PROTOCOL_VERSION, h.process.pid))
        message, fds = await h.peer.receive()
        assert isinstance(message, Configure)
        assert message.listeners == 1
        (fd,) = fds
        with socket.socket(fileno=fd) as received:
            assert received.getsockname() == listener.getsockname()
        nursery.cancel_scope.cancel()
    h.close()
    listener.close()


async def test_stats_and_failed_before_ready_are_taken_in() -> None:
    h = Harness()
    async with trio.open_nursery() as nursery:
        nursery.start_soon(h.run)
        await h.peer.send(Hello(PROTOCOL_VERSION, h.process.pid))
        await h.peer.receive()
        await h.send(Stats(1, 0, 0))
        assert h.worker.stats_received == 1
        await h.send(Failed("startup", "lifespan startup failed: no database"))
        assert h.worker.failure == "lifespan startup failed: no database"
        assert not h.process.killed and not h.link.ready
        await h.send(Ready())
        assert h.link.ready
        nursery.cancel_scope.cancel()
    h.close()


@pytest.mark.parametrize(
    ("first", "why"),
    [
        (Hello(PROTOCOL_VERSION + 1, 4242), "protocol version"),
        (Ready(), "expected Hello, got Ready"),
        (Stats(0, 0, 0), "expected Hello, got Stats"),
    ],
)
async def test_a_bad_first_message_kills_the_worker(first: Message, why: str) -> None:
    h = Harness()
    async with trio.open_nursery() as nursery:
        nursery.start_soon(h.run)
        await h.send(first)
    assert h.finished and h.process.killed
    assert h.worker.failure is not None and why in h.worker.failure
    assert h.ready_calls == []
    h.close()


@pytest.mark.parametrize(
    ("message", "why"),
    [
        (Taken(1, 1), "unexpected Taken before Ready"),
        (Retire("bored"), "unexpected Retire before Ready"),
        (Stats(-1, 0, 0), "connections_total out of range"),
    ],
)
async def test_a_breach_before_ready_kills_the_worker(message: Message, why: str) -> None:
    h = Harness()
    async with trio.open_nursery() as nursery:
        nursery.start_soon(h.run)
        await h.peer.send(Hello(PROTOCOL_VERSION, h.process.pid))
        await h.peer.receive()
        await h.send(message)
    assert h.finished and h.process.killed
    assert h.worker.failure == f"protocol error: {why}"
    assert h.calls == [] and h.retired == []
    h.close()


async def test_garbage_during_the_handshake_kills_the_worker() -> None:
    h = Harness()
    async with trio.open_nursery() as nursery:
        nursery.start_soon(h.run)
        await h.send_raw(b"\xfe not a message")
    assert h.finished and h.process.killed
    assert h.worker.failure is not None and "unknown message tag" in h.worker.failure
    h.close()


async def test_no_hello_in_time_kills_the_worker(autojump_clock: trio.testing.MockClock) -> None:
    h = Harness()
    async with trio.open_nursery() as nursery:
        nursery.start_soon(h.run)
        await trio.sleep(HELLO_TIMEOUT - 1)
        assert not h.process.killed
        await trio.sleep(2)
        assert h.finished and h.process.killed
    assert h.worker.failure == "did not become ready in time"
    h.close()


async def test_no_ready_in_time_kills_the_worker(autojump_clock: trio.testing.MockClock) -> None:
    h = Harness(ready_timeout=5.0)
    async with trio.open_nursery() as nursery:
        nursery.start_soon(h.run)
        await h.peer.send(Hello(PROTOCOL_VERSION, h.process.pid))
        await h.peer.receive()
        await trio.sleep(4)
        await h.send(Stats(0, 0, 0))  # progress reports do not extend the deadline
        assert not h.process.killed
        await trio.sleep(2)
        assert h.finished and h.process.killed
    assert h.worker.failure == "did not become ready in time"
    h.close()


async def test_the_hello_timeout_log_names_the_timeout_that_expired(
    autojump_clock: trio.testing.MockClock, caplog: pytest.LogCaptureFixture
) -> None:
    h = Harness(ready_timeout=5.0)
    with caplog.at_level(logging.ERROR, "rrproxy.front"):
        async with trio.open_nursery() as nursery:
            nursery.start_soon(h.run)
            await trio.sleep(HELLO_TIMEOUT + 1)
    h.close()
    assert h.process.killed
    assert f"within {HELLO_TIMEOUT:g} s" in caplog.text


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
    (Stats(0, -1, 0), "connections_active out of range"),
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


@pytest.mark.parametrize("message", [Taken(1, 1), Rejected(1)])
async def test_handoff_answers_without_handoff_are_a_breach(message: Message) -> None:
    async with linked(Harness(handoff=False)) as h:
        await h.send(message)
        assert len(h.retired) == 1 and "policy without handoff" in h.retired[0]
        assert h.worker.connections_active == 0


async def test_an_fd_from_a_worker_is_refused_and_closed() -> None:
    async with linked(Harness()) as h:
        left, right = socket.socketpair()
        before = _open_fds()
        await h.peer.send(Load(1), [left.fileno()])
        await trio.testing.wait_all_tasks_blocked()
        assert len(h.retired) == 1 and "arrived with 1 fds" in h.retired[0]
        assert _open_fds() == before  # the copy the front received is closed
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


# --- the end of the channel -----------------------------------------------------------------


async def test_a_worker_that_closes_its_channel_and_lives_on_is_killed(
    autojump_clock: trio.testing.MockClock,
) -> None:
    h = Harness()
    async with trio.open_nursery() as nursery:
        nursery.start_soon(h.run)
        await h.handshake()
        h.peer.close()
        await trio.sleep(CHANNEL_EOF_GRACE - 0.5)
        assert not h.process.killed
        await trio.sleep(1)
        assert h.process.killed and h.finished
    h.close()


async def test_a_worker_that_exits_is_not_killed(
    autojump_clock: trio.testing.MockClock, caplog: pytest.LogCaptureFixture
) -> None:
    h = Harness()
    with caplog.at_level(logging.ERROR, "rrproxy.front"):
        async with trio.open_nursery() as nursery:
            nursery.start_soon(h.run)
            await h.handshake()
            h.peer.close()
            await trio.sleep(CHANNEL_EOF_GRACE / 2)
            h.process.exit(0)
            await trio.testing.wait_all_tasks_blocked()
            assert h.finished
    assert h.process.signals == []
    assert caplog.text == ""
    h.close()


async def test_read_remaining_handles_what_a_dead_worker_left_behind() -> None:
    h = Harness()
    async with trio.open_nursery() as nursery:
        nursery.start_soon(h.run)
        await h.handshake()
        nursery.cancel_scope.cancel()
    # The link's task is gone (the process exited); its last answers are still queued.
    await h.peer.send(Taken(4, 2))
    h.raw.send(b"\xfe")  # skipped, not fatal
    await h.peer.send(Taken(5, 1))
    h.peer.close()
    h.link.read_remaining()
    assert h.calls == [("taken", 4), ("taken", 5)]
    assert h.worker.connections_active == 1
    h.worker.channel.close()
    assert _open_fds() == h.baseline


async def test_read_remaining_before_ready_finds_why_it_failed() -> None:
    h = Harness()
    await h.peer.send(Failed("import", "cannot import module 'app'"))
    h.link.read_remaining()
    assert h.worker.failure == "cannot import module 'app'"
    h.close()
