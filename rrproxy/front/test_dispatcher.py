"""The dispatcher with real WorkerProcess objects and real channels, but no worker
processes: each worker's end of its channel is read here, the connections are real
socketpairs, and every descriptor is checked closed at the end of each test."""

from __future__ import annotations

import logging
import os
import socket
from typing import cast

import pytest
import trio
import trio.testing

from ..fds import close_quietly
from ..ipc.channel import WorkerChannel, socketpair
from ..ipc.messages import MAX_BATCH, NewConn, NewConns, Poll
from .dispatcher import HOLD_FOR_ROOM, REJECT_PAUSE, Dispatcher
from .policies import IpHash, LeastConn, Policy, RoundRobin
from .process import SOFT_WINDOW, WorkerProcess, WorkerState


def _open_fds() -> int:
    return len(os.listdir("/proc/self/fd"))


class FakeProcess:
    """What WorkerProcess reads of its process here: a pid and no exit yet."""

    def __init__(self, pid: int) -> None:
        self.pid = pid
        self.returncode: int | None = None


class Pool:
    """Workers with their channels, a Dispatcher over them, and the client ends of the
    connections it was given. Connections are numbered 1, 2, ... in the order they
    were accepted; what a worker receives is identified by the socket's inode, not by
    trusting the dispatcher's ids."""

    def __init__(
        self,
        count: int,
        *,
        policy: Policy | None = None,
        max_held: int = 4096,
        max_connections: int | None = None,
        limit_concurrency: int | None = None,
        ready: bool = True,
    ) -> None:
        self.baseline = _open_fds()
        self.workers: list[WorkerProcess] = []
        self.peers: dict[int, WorkerChannel] = {}
        for slot in range(1, count + 1):
            front_end, worker_end = socketpair()
            worker = WorkerProcess(
                slot,
                cast(trio.Process, FakeProcess(10000 + slot)),
                WorkerChannel(front_end, accepts_fds=False),
                limit_concurrency,
            )
            if ready:
                worker.state = WorkerState.READY
            self.workers.append(worker)
            self.peers[slot] = WorkerChannel(worker_end)
        self.dispatcher = Dispatcher(
            policy or RoundRobin(), lambda: self.workers, max_held, max_connections
        )
        self.clients: dict[int, socket.socket] = {}
        self.front_fds: dict[int, int] = {}
        self._by_inode: dict[int, int] = {}
        #: connection number -> the conn_id the dispatcher sent it under (last time).
        self.conn_ids: dict[int, int] = {}
        #: slot -> every message its worker received, in order.
        self.messages: dict[int, list[NewConn | NewConns]] = {slot: [] for slot in self.peers}
        self._count = 0

    def worker(self, slot: int) -> WorkerProcess:
        return self.workers[slot - 1]

    def accept(self, count: int = 1, client: str | None = None) -> list[int]:
        """`count` new connections, submitted together; their numbers."""
        accepted: list[tuple[int, str | None]] = []
        numbers = []
        for _ in range(count):
            server, client_end = socket.socketpair()
            fd = server.detach()
            self._count += 1
            number = self._count
            self.clients[number] = client_end
            self.front_fds[number] = fd
            self._by_inode[os.fstat(fd).st_ino] = number
            accepted.append((fd, client))
            numbers.append(number)
        self.dispatcher.submit_many(accepted)
        return numbers

    def received(self, slot: int) -> list[int]:
        """The connections worker `slot` has been sent since the last call, in order
        (the fds it got are closed)."""
        numbers = []
        for number, fd in self.received_open(slot):
            os.close(fd)
            numbers.append(number)
        return numbers

    def received_open(self, slot: int) -> list[tuple[int, int]]:
        """As received(), with the fds the worker got, open: (number, fd) pairs."""
        peer = self.peers[slot]
        kept: list[tuple[int, int]] = []
        while (got := peer.receive_nowait()) is not None:
            message, fds = got
            assert isinstance(message, NewConn | NewConns)
            self.messages[slot].append(message)
            ids = (message.conn_id,) if isinstance(message, NewConn) else message.conn_ids
            assert len(ids) == len(fds)
            for conn_id, fd in zip(ids, fds, strict=True):
                number = self._by_inode[os.fstat(fd).st_ino]
                self.conn_ids[number] = conn_id
                kept.append((number, fd))
        return kept

    def take(self, slot: int, number: int) -> None:
        self.dispatcher.taken(self.worker(slot), self.conn_ids[number])

    def reject(self, slot: int, number: int) -> None:
        self.dispatcher.rejected(self.worker(slot), self.conn_ids[number])

    def unacked(self, slot: int) -> list[int]:
        """The connection numbers worker `slot` holds unanswered, oldest first."""
        return [
            self._by_inode[os.fstat(conn.fd).st_ino] for conn in self.worker(slot).unacked.values()
        ]

    def queued(self) -> list[int]:
        return [self._by_inode[os.fstat(conn.fd).st_ino] for conn in self.dispatcher.queue]

    def finish(self) -> None:
        """Every worker takes what it was handed, the queue is dropped, everything is
        closed; then no descriptor may be left open."""
        for worker in self.workers:
            for conn_id in list(worker.unacked):
                self.dispatcher.taken(worker, conn_id)
        self.dispatcher.close_all()
        assert self.dispatcher.held == 0
        for slot in self.peers:
            if not self.peers[slot].closed:
                try:
                    self.received(slot)
                except Exception:
                    pass
        for client in self.clients.values():
            client.close()
        for slot, peer in self.peers.items():
            peer.close()
            self.worker(slot).channel.close()
        assert _open_fds() == self.baseline, "a descriptor was left open"


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
        while worker.channel.send_nowait(Poll()):  # worker 1 stops reading its channel
            pass
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
        while worker.channel.send_nowait(Poll()):
            pass
    # Planned 1, 3 for worker 1 and 2, 4 for worker 2; neither channel takes them.
    pool.accept(4)
    assert pool.queued() == [1, 2, 3, 4]
    assert all(worker.channel_full and not worker.unacked for worker in pool.workers)
    pool.finish()


async def test_a_share_a_full_channel_refused_goes_to_another_worker_at_once() -> None:
    pool = Pool(2)
    while pool.worker(1).channel.send_nowait(Poll()):
        pass
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
        while worker.channel.send_nowait(Poll()):
            pass
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
    assert _open_fds() == pool.baseline


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
