"""The dispatcher handing out, queueing and keeping to its limits (fake_dispatch.Pool:
real channels and socketpairs, no worker process). Rejections, dead workers and
channels without room are in test_dispatcher_answers.py."""

from __future__ import annotations

import logging
import os
import socket

import pytest
import trio
import trio.testing

from ..ipc.messages import MAX_BATCH, NewConn, NewConns
from .dispatcher import HOLD_FOR_ROOM
from .fake_dispatch import Pool
from .policies import IpHash, LeastConn
from .process import SOFT_WINDOW, WorkerState

# --- handing out --------------------------------------------------------------------


async def test_round_robin_one_connection_at_a_time() -> None:
    pool = Pool(3)
    for _ in range(7):
        pool.accept()
    assert pool.received(1) == [1, 4, 7]
    assert pool.received(2) == [2, 5]
    assert pool.received(3) == [3, 6]
    assert all(isinstance(m, NewConn) for ms in pool.messages.values() for m in ms)
    dispatcher = pool.dispatcher
    assert dispatcher.handed_total == 7
    assert dispatcher.held == 7  # handed, but nobody has answered yet
    assert not dispatcher.queue
    assert pool.unacked(1) == [1, 4, 7]
    pool.finish()


async def test_a_burst_goes_in_one_message_per_worker_with_its_fds_in_order() -> None:
    pool = Pool(2)
    pool.accept(5)
    assert pool.received(1) == [1, 3, 5]
    assert pool.received(2) == [2, 4]
    assert [type(m) for m in pool.messages[1]] == [NewConns]
    assert [type(m) for m in pool.messages[2]] == [NewConns]
    pool.finish()


async def test_the_worker_gets_the_connection_itself() -> None:
    pool = Pool(1)
    pool.accept()
    ((number, fd),) = pool.received_open(1)
    with socket.socket(fileno=fd) as served:
        pool.clients[number].sendall(b"GET / HTTP/1.1\r\n")
        assert served.recv(100) == b"GET / HTTP/1.1\r\n"
    pool.finish()


async def test_taken_closes_the_front_copy(caplog: pytest.LogCaptureFixture) -> None:
    pool = Pool(1)
    pool.accept(2)
    assert pool.received(1) == [1, 2]
    fd = pool.front_fds[1]
    os.fstat(fd)  # open: the front keeps its copy until the worker answers
    pool.take(1, 1)
    with pytest.raises(OSError):
        os.fstat(fd)
    assert pool.dispatcher.held == 1
    assert pool.unacked(1) == [2]
    # An id the worker was never handed changes nothing (and is logged).
    with caplog.at_level(logging.WARNING, "rrproxy.front"):
        pool.dispatcher.taken(pool.worker(1), 999)
    assert "unknown connection 999" in caplog.text
    assert pool.dispatcher.held == 1
    assert pool.unacked(1) == [2]
    os.fstat(pool.front_fds[2])
    pool.finish()


async def test_more_than_a_batch_goes_in_several_messages(
    autojump_clock: trio.testing.MockClock,
) -> None:
    count = MAX_BATCH + 8
    pool = Pool(1, ready=False)
    pool.accept(count)
    assert len(pool.dispatcher.queue) == count
    await trio.sleep(HOLD_FOR_ROOM)
    pool.worker(1).state = WorkerState.READY
    # Waited long enough to go to a worker without room (past its SOFT_WINDOW).
    pool.dispatcher.pump()
    assert pool.received(1) == list(range(1, count + 1))
    sizes = [len(m.conn_ids) if isinstance(m, NewConns) else 1 for m in pool.messages[1]]
    assert sizes == [MAX_BATCH, 8]
    pool.finish()


# --- queueing -------------------------------------------------------------------------


async def test_no_worker_ready_queues_then_pump_hands_out_in_order() -> None:
    pool = Pool(2, ready=False)
    pool.accept(3)
    assert pool.received(1) == pool.received(2) == []
    assert pool.queued() == [1, 2, 3]
    assert pool.dispatcher.held == 3
    for worker in pool.workers:
        worker.state = WorkerState.READY
    pool.dispatcher.pump()
    assert pool.received(1) == [1, 3]
    assert pool.received(2) == [2]
    assert not pool.dispatcher.queue
    pool.finish()


async def test_a_new_connection_never_overtakes_a_queued_one() -> None:
    pool = Pool(1, ready=False)
    pool.accept(2)
    pool.worker(1).state = WorkerState.READY
    # The worker could take it now, but two connections wait ahead of it.
    pool.accept()
    assert pool.received(1) == []
    assert pool.queued() == [1, 2, 3]
    pool.dispatcher.pump()
    assert pool.received(1) == [1, 2, 3]
    pool.finish()


async def test_without_room_a_connection_waits_then_goes_anyway(
    autojump_clock: trio.testing.MockClock,
) -> None:
    pool = Pool(1, limit_concurrency=1)
    worker = pool.worker(1)
    worker.connections_active = 1  # at --limit-concurrency: accepting, but no room
    async with trio.open_nursery() as nursery:
        nursery.start_soon(pool.dispatcher.run)
        pool.accept()
        assert pool.queued() == [1]
        await trio.sleep(HOLD_FOR_ROOM / 2)
        assert pool.received(1) == []
        await trio.sleep(HOLD_FOR_ROOM)
        assert pool.received(1) == [1]
        assert not pool.dispatcher.queue
        nursery.cancel_scope.cancel()
    pool.finish()


async def test_only_connections_that_waited_may_go_to_a_worker_without_room(
    autojump_clock: trio.testing.MockClock,
) -> None:
    pool = Pool(1, limit_concurrency=1)
    pool.worker(1).connections_active = 1  # no room
    pool.accept()
    await trio.sleep(HOLD_FOR_ROOM)
    pool.accept()  # behind the queue: it waits its own HOLD_FOR_ROOM
    pool.dispatcher.pump()
    assert pool.received(1) == [1]
    assert pool.queued() == [2]
    await trio.sleep(HOLD_FOR_ROOM)
    pool.dispatcher.pump()
    assert pool.received(1) == [2]
    pool.finish()


async def test_ip_hash_keeps_a_client_on_one_worker() -> None:
    pool = Pool(3, policy=IpHash())
    pool.accept(4, client="10.0.0.1")
    pool.accept(client="10.0.0.1")
    got = {slot: pool.received(slot) for slot in (1, 2, 3)}
    assert sorted(got.values()) == [[], [], [1, 2, 3, 4, 5]]
    (slot,) = [slot for slot, numbers in got.items() if numbers]
    assert [type(m) for m in pool.messages[slot]] == [NewConns, NewConn]
    pool.finish()


async def test_least_conn_fills_the_emptiest_worker() -> None:
    pool = Pool(3, policy=LeastConn())
    pool.worker(1).connections_active = 5
    pool.worker(2).connections_active = 1
    pool.worker(3).connections_active = 2
    pool.accept(3)
    # 2 (load 1), then 2 and 3 tie at 2 and take turns from where it left off.
    assert pool.received(2) == [1, 3]
    assert pool.received(3) == [2]
    assert pool.received(1) == []
    pool.finish()


async def test_room_reported_by_a_worker_hands_out_at_once() -> None:
    pool = Pool(1, limit_concurrency=1)
    worker = pool.worker(1)
    worker.connections_active = 1
    pool.accept()
    assert pool.queued() == [1]
    worker.connections_active = 0  # a Load message said a connection closed
    pool.dispatcher.load_changed()
    assert pool.received(1) == [1]
    pool.finish()


async def test_a_worker_at_its_soft_window_is_passed_over() -> None:
    pool = Pool(2)
    for _ in range(2 * SOFT_WINDOW):
        pool.accept()
    assert len(pool.received(1)) == len(pool.received(2)) == SOFT_WINDOW
    pool.accept()  # no worker has room: it waits
    assert pool.queued() == [2 * SOFT_WINDOW + 1]
    pool.take(2, 2)  # worker 2 answers: room again, and the queue is pumped
    assert pool.received(2) == [2 * SOFT_WINDOW + 1]
    assert pool.received(1) == []
    pool.finish()


async def test_wait_queue_empty_returns_once_everything_is_handed() -> None:
    pool = Pool(1, ready=False)
    pool.accept(2)
    done = False

    async def waiter() -> None:
        nonlocal done
        await pool.dispatcher.wait_queue_empty()
        done = True

    async with trio.open_nursery() as nursery:
        nursery.start_soon(waiter)
        await trio.testing.wait_all_tasks_blocked()
        assert not done
        pool.worker(1).state = WorkerState.READY
        pool.dispatcher.pump()
        await trio.testing.wait_all_tasks_blocked()
        assert done
    pool.finish()


# --- limits ---------------------------------------------------------------------------


async def test_max_held_counts_queued_and_unanswered_connections() -> None:
    pool = Pool(1, max_held=3, ready=False)
    dispatcher = pool.dispatcher
    assert dispatcher.room() == 3 and not dispatcher.full
    pool.accept(2)
    assert dispatcher.room() == 1 and not dispatcher.full
    pool.accept()
    assert dispatcher.room() == 0 and dispatcher.full
    woke = False

    async def acceptor() -> None:
        nonlocal woke
        await dispatcher.wait_for_room()
        woke = True

    async with trio.open_nursery() as nursery:
        nursery.start_soon(acceptor)
        await trio.testing.wait_all_tasks_blocked()
        pool.worker(1).state = WorkerState.READY
        dispatcher.pump()
        await trio.testing.wait_all_tasks_blocked()
        # Handed but not answered: still the front's.
        assert pool.received(1) == [1, 2, 3]
        assert dispatcher.full and not woke
        pool.take(1, 2)
        await trio.testing.wait_all_tasks_blocked()
        assert woke
        assert dispatcher.room() == 1 and not dispatcher.full
    pool.finish()


async def test_max_connections_counts_what_the_workers_report() -> None:
    pool = Pool(2, max_connections=10)
    dispatcher = pool.dispatcher
    pool.worker(1).connections_active = 4
    pool.worker(2).connections_active = 3
    assert dispatcher.room() == 3 and not dispatcher.full
    pool.accept(3)
    assert dispatcher.room() == 0 and dispatcher.full
    woke = False

    async def acceptor() -> None:
        nonlocal woke
        await dispatcher.wait_for_room()
        woke = True

    async with trio.open_nursery() as nursery:
        nursery.start_soon(acceptor)
        await trio.testing.wait_all_tasks_blocked()
        assert not woke
        pool.worker(1).connections_active = 2  # Load: two connections closed
        dispatcher.load_changed()
        await trio.testing.wait_all_tasks_blocked()
        assert woke
    assert dispatcher.room() == 2 and not dispatcher.full
    pool.finish()


async def test_room_is_the_tighter_of_the_two_limits() -> None:
    pool = Pool(1, max_held=2, max_connections=100)
    pool.worker(1).connections_active = 50
    assert pool.dispatcher.room() == 2
    pool.accept()
    assert pool.dispatcher.room() == 1
    pool.worker(1).connections_active = 98
    assert pool.dispatcher.room() == 1
    assert not pool.dispatcher.full
    pool.worker(1).connections_active = 99
    assert pool.dispatcher.room() == 0
    assert pool.dispatcher.full
    pool.finish()
