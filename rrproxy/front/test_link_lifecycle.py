"""WorkerLink's handshake and end (fake_link.Harness drives the worker's end of a real
channel): Hello, Configure and Ready, the timeouts, and what a worker that closes its
channel or exits leaves behind. No worker process: a fake stands in for it."""

from __future__ import annotations

import json
import logging
import socket

import pytest
import trio
import trio.testing

from ..config import WorkerConfig
from ..ipc.messages import (
    PROTOCOL_VERSION,
    Configure,
    Failed,
    Hello,
    Message,
    Ready,
    Retire,
    Stats,
    Taken,
)
from .fake_link import Harness, open_fd_count
from .link import CHANNEL_EOF_GRACE, HELLO_TIMEOUT

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
    assert open_fd_count() == h.baseline


async def test_read_remaining_before_ready_finds_why_it_failed() -> None:
    h = Harness()
    await h.peer.send(Failed("import", "cannot import module 'app'"))
    h.link.read_remaining()
    assert h.worker.failure == "cannot import module 'app'"
    h.close()
