"""A worker whose channel was full gets connections again once it has room, and the
health check judges a channel by what is really unread, not by an old refusal.
Same fixture as test_dispatcher.py: real channels, no worker processes."""

from __future__ import annotations

import types
from collections.abc import Callable
from typing import cast

import pytest
import trio
import trio.testing

from ..ipc.channel import WorkerChannel
from ..ipc.messages import Poll
from . import health
from .dispatcher import HOLD_FOR_ROOM
from .fake_dispatch import Pool, fill_socket, fill_with_queue
from .process import WorkerProcess
from .supervisor import Supervisor


async def _read_polls(peer: WorkerChannel, count: int) -> None:
    """The worker catches up with its channel: `count` Polls."""
    for _ in range(count):
        message, _fds = await peer.receive()
        assert isinstance(message, Poll)


@pytest.mark.parametrize("fill", [fill_with_queue, fill_socket], ids=["queued", "socket"])
async def test_a_worker_gets_connections_again_once_its_channel_has_room(
    autojump_clock: trio.testing.MockClock, fill: Callable[[WorkerProcess], int]
) -> None:
    # No Taken or Rejected comes here: nothing was handed to the worker, so the only
    # sign of room is the channel itself (the flusher sees it drain or turn writable).
    pool = Pool(1)
    worker = pool.worker(1)
    sent = fill(worker)
    pool.accept()
    assert pool.queued() == [1]
    assert worker.channel_full
    async with trio.open_nursery() as nursery:
        nursery.start_soon(pool.dispatcher.run)
        nursery.start_soon(worker.channel.run_flusher)
        await _read_polls(pool.peers[1], sent)
        await trio.sleep(HOLD_FOR_ROOM * 3)
        assert not worker.channel_full
        assert pool.received(1) == [1]
        nursery.cancel_scope.cancel()
    pool.finish()


def _watched(
    monkeypatch: pytest.MonkeyPatch, timeout: float
) -> tuple[Pool, WorkerProcess, Supervisor, list[str]]:
    """One worker under the health check (what it reads of the supervisor, faked), and
    a list that says when it would have been killed."""
    pool = Pool(1)
    worker = pool.worker(1)
    killed: list[str] = []
    monkeypatch.setattr(worker, "kill", lambda: killed.append("killed"))
    config = types.SimpleNamespace(timeout=timeout, handoff_timeout=0.0, max_memory=0)
    slot = types.SimpleNamespace(current=worker, incoming=None)
    fake = types.SimpleNamespace(config=config, slots={worker.slot_id: slot})
    return pool, worker, cast(Supervisor, fake), killed


async def test_health_does_not_kill_a_worker_whose_full_channel_drained(
    autojump_clock: trio.testing.MockClock, monkeypatch: pytest.MonkeyPatch
) -> None:
    pool, worker, supervisor, killed = _watched(monkeypatch, timeout=2.0)
    sent = fill_socket(worker)
    pool.accept()  # refused: the channel is full
    async with trio.open_nursery() as nursery:
        nursery.start_soon(worker.channel.run_flusher)
        await _read_polls(pool.peers[1], sent)
        for _ in range(6):  # 3 s of a worker that heartbeats and reads its channel
            await trio.sleep(0.5)
            worker.last_heard = trio.current_time()
            health.check(supervisor, worker)
        assert killed == []
        nursery.cancel_scope.cancel()
    pool.dispatcher.pump()
    pool.finish()


async def test_health_kills_a_worker_that_leaves_its_channel_unread(
    autojump_clock: trio.testing.MockClock, monkeypatch: pytest.MonkeyPatch
) -> None:
    pool, worker, supervisor, killed = _watched(monkeypatch, timeout=2.0)
    fill_socket(worker)
    pool.accept()
    async with trio.open_nursery() as nursery:
        nursery.start_soon(worker.channel.run_flusher)
        for _ in range(6):  # it heartbeats, but never reads its channel
            await trio.sleep(0.5)
            worker.last_heard = trio.current_time()
            health.check(supervisor, worker)
        nursery.cancel_scope.cancel()
    assert killed  # (kill is faked here: the process lives on, and is killed again)
    assert worker.failure is not None and "has not read its channel" in worker.failure
    pool.finish()


async def test_room_in_the_channel_hands_out_at_once(
    autojump_clock: trio.testing.MockClock,
) -> None:
    # No dispatcher.run here (it would pump every HOLD_FOR_ROOM): the channel's own
    # word that it has room is what sends the waiting connection.
    pool = Pool(1)
    worker = pool.worker(1)
    worker.channel.on_room = pool.dispatcher.channel_room  # as the supervisor wires it
    sent = fill_socket(worker)
    pool.accept()
    assert pool.queued() == [1]
    async with trio.open_nursery() as nursery:
        nursery.start_soon(worker.channel.run_flusher)
        await _read_polls(pool.peers[1], sent)
        with trio.fail_after(HOLD_FOR_ROOM / 2):
            while not pool.dispatcher.handed_total:
                await trio.sleep(0)
        assert pool.received(1) == [1]
        assert worker.channel.refused_since is None
        nursery.cancel_scope.cancel()
    pool.finish()
