"""The dispatcher when a handoff goes wrong (fake_dispatch.Pool: real channels and
socketpairs, no worker process): rejections, workers that die holding connections,
and channels that broke or have no room."""

from __future__ import annotations

import logging
import os
import socket

import pytest
import trio
import trio.testing

from ..fds import close_quietly
from ..ipc.messages import MAX_BATCH
from .dispatcher import HOLD_FOR_ROOM, REJECT_PAUSE
from .fake_dispatch import Pool, fill_with_queue, open_fd_count
from .policies import IpHash
from .process import WorkerState

# --- answers: rejected, and workers that die -------------------------------------------


async def test_a_rejected_connection_goes_to_another_worker(
    autojump_clock: trio.testing.MockClock,
) -> None:
    pool = Pool(2)
    pool.accept()
    pool.accept()
    assert pool.received(1) == [1]
    assert pool.received(2) == [2]
    # Worker 1 is next in rotation, but it gave a connection back: it is skipped.
    pool.reject(1, 1)
    assert pool.received(2) == [1]
    assert pool.dispatcher.rehanded_total == 1
    assert pool.dispatcher.held == 2
    assert pool.unacked(1) == []
    assert pool.unacked(2) == [2, 1]
    os.fstat(pool.front_fds[1])  # still the front's until worker 2 answers
    pool.accept()
    assert pool.received(2) == [3]
    assert pool.received(1) == []
    await trio.sleep(REJECT_PAUSE)
    pool.accept()
    assert pool.received(1) == [4]
    pool.finish()


async def test_a_connection_rejected_by_the_only_worker_comes_back_after_the_pause(
    autojump_clock: trio.testing.MockClock,
) -> None:
    pool = Pool(1)
    async with trio.open_nursery() as nursery:
        nursery.start_soon(pool.dispatcher.run)
        pool.accept()
        assert pool.received(1) == [1]
        pool.reject(1, 1)
        assert pool.queued() == [1]
        await trio.sleep(REJECT_PAUSE / 2)
        assert pool.received(1) == []
        await trio.sleep(REJECT_PAUSE + HOLD_FOR_ROOM)
        assert pool.received(1) == [1]
        assert not pool.dispatcher.queue
        nursery.cancel_scope.cancel()
    pool.finish()


async def test_a_rejected_connection_goes_ahead_of_queued_ones() -> None:
    pool = Pool(1)
    pool.accept()
    assert pool.received(1) == [1]
    pool.worker(1).state = WorkerState.DRAINING  # it gives back what it has not read
    pool.accept()
    pool.reject(1, 1)
    assert pool.queued() == [1, 2]
    pool.finish()


async def test_a_rejection_for_an_unknown_connection_is_ignored(
    caplog: pytest.LogCaptureFixture,
) -> None:
    pool = Pool(1)
    pool.accept()
    pool.received(1)
    with caplog.at_level(logging.WARNING, "rrproxy.front"):
        pool.dispatcher.rejected(pool.worker(1), 4242)
    assert "rejected unknown connection 4242" in caplog.text
    assert pool.dispatcher.rehanded_total == 0
    assert not pool.dispatcher.queue
    assert pool.worker(1).accepting  # not paused for a bogus answer
    pool.finish()


async def test_a_dead_workers_unanswered_connections_are_rehanded() -> None:
    pool = Pool(2)
    for _ in range(4):
        pool.accept()
    assert pool.received(1) == [1, 3]
    assert pool.received(2) == [2, 4]
    pool.take(2, 2)
    # Worker 1 dies without having read connections 1 and 3.
    dead = pool.worker(1)
    dead.state = WorkerState.STOPPED
    pool.peers[1].close()
    pool.dispatcher.reclaim(dead)
    assert dead.unacked == {}
    kept = pool.received_open(2)
    assert [number for number, _ in kept] == [1, 3]
    assert pool.dispatcher.rehanded_total == 2
    assert pool.dispatcher.held == 3  # 1 and 3 again, and 4
    # Nothing was lost: the clients reach worker 2 through what it was given.
    for number, fd in kept:
        with socket.socket(fileno=fd) as served:
            pool.clients[number].sendall(b"hello %d" % number)
            assert served.recv(100) == b"hello %d" % number
    pool.finish()


async def test_reclaimed_connections_go_ahead_of_queued_ones() -> None:
    pool = Pool(2)
    pool.accept()
    pool.accept()
    pool.accept()
    assert pool.received(1) == [1, 3]
    assert pool.received(2) == [2]
    pool.worker(2).state = WorkerState.STARTING  # say, being replaced
    pool.worker(1).state = WorkerState.STOPPED
    pool.accept()  # nobody can take it
    assert pool.queued() == [4]
    pool.dispatcher.reclaim(pool.worker(1))
    assert pool.queued() == [1, 3, 4]
    assert pool.dispatcher.held == 4
    pool.worker(2).state = WorkerState.READY
    pool.dispatcher.pump()
    assert pool.received(2) == [1, 3, 4]
    pool.finish()


async def test_reclaim_of_a_worker_holding_nothing_changes_nothing() -> None:
    pool = Pool(1)
    pool.dispatcher.reclaim(pool.worker(1))
    assert pool.dispatcher.rehanded_total == 0
    assert not pool.dispatcher.queue
    pool.finish()


async def test_a_worker_whose_channel_broke_is_passed_over(
    autojump_clock: trio.testing.MockClock,
) -> None:
    pool = Pool(2)
    pool.peers[1].close()  # worker 1 died; its supervisor has not noticed yet
    async with trio.open_nursery() as nursery:
        nursery.start_soon(pool.dispatcher.run)
        pool.accept()
        assert pool.worker(1).channel.closed
        assert not pool.worker(1).accepting
        # It goes to worker 2 at once, not at the next pump.
        assert pool.queued() == []
        assert pool.received(2) == [1]
        pool.accept()
        assert pool.received(2) == [2]
        nursery.cancel_scope.cancel()
    assert pool.dispatcher.held == 2
    pool.finish()


async def test_a_worker_whose_channel_is_full_is_passed_over(
    autojump_clock: trio.testing.MockClock,
) -> None:
    pool = Pool(2)
    worker = pool.worker(1)
    async with trio.open_nursery() as nursery:
        nursery.start_soon(pool.dispatcher.run)
        pool.accept()
        assert pool.received(1) == [1]
        fill_with_queue(worker)  # worker 1 stops reading its channel
        pool.accept()  # worker 2's turn
        pool.accept()  # worker 1's turn, but its channel is full
        assert worker.channel_full
        assert not worker.accepting
        await trio.sleep(HOLD_FOR_ROOM * 1.5)
        assert pool.received(2) == [2, 3]
        pool.take(1, 1)  # an answer, but what waits in its channel is still unsent
        assert worker.channel_full  # (test_channel_room.py: until the flusher sends it)
        nursery.cancel_scope.cancel()
    pool.finish()


async def test_connections_that_could_not_be_sent_keep_their_order() -> None:
    pool = Pool(2)
    for worker in pool.workers:
        fill_with_queue(worker)
    # Planned 1, 3 for worker 1 and 2, 4 for worker 2; neither channel takes them.
    pool.accept(4)
    assert pool.queued() == [1, 2, 3, 4]
    assert all(worker.channel_full and not worker.unacked for worker in pool.workers)
    pool.finish()


async def test_a_share_a_full_channel_refused_goes_to_another_worker_at_once() -> None:
    pool = Pool(2)
    fill_with_queue(pool.worker(1))
    # Round-robin plans 1 for worker 1 and 2 for worker 2; worker 1's channel refuses.
    pool.accept(2)
    assert pool.queued() == []
    assert sorted(pool.unacked(2)) == [1, 2]
    assert pool.worker(1).channel_full and not pool.worker(1).unacked
    pool.finish()


@pytest.mark.parametrize("how", ["closed", "full"])
async def test_a_full_batch_that_cannot_be_sent_is_not_lost(how: str) -> None:
    # ip-hash sends every connection of one client to its worker, room or not, so an
    # accept burst of MAX_BATCH or more from one address fills one share at once.
    pool = Pool(1, policy=IpHash())
    worker = pool.worker(1)
    if how == "closed":
        pool.peers[1].close()  # the worker just died
    else:
        fill_with_queue(worker)
    count = MAX_BATCH + 3
    pool.accept(count, client="10.0.0.7")
    dispatcher = pool.dispatcher
    try:
        held = len(dispatcher.queue) + len(worker.unacked)
        assert held == dispatcher.held == count
    finally:
        # The connections the dispatcher forgot: closed here, so the next test runs clean.
        kept = {c.fd for c in dispatcher.queue} | {c.fd for c in worker.unacked.values()}
        for fd in set(pool.front_fds.values()) - kept:
            close_quietly(fd)
        dispatcher.close_all()
        for client in pool.clients.values():
            client.close()
        pool.peers[1].close()
        worker.channel.close()
    assert open_fd_count() == pool.baseline


async def test_close_all_closes_what_is_queued() -> None:
    pool = Pool(1, ready=False)
    pool.accept(3)
    fds = list(pool.front_fds.values())
    pool.dispatcher.close_all()
    assert pool.dispatcher.held == 0
    assert not pool.dispatcher.queue
    for fd in fds:
        with pytest.raises(OSError):
            os.fstat(fd)
    pool.finish()
