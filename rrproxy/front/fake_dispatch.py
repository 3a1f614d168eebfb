"""The dispatcher under test: real WorkerProcess objects and real channels, but no
worker processes. Pool reads each worker's end of its channel here; the connections
are real socketpairs, and every descriptor is checked closed at the end."""

from __future__ import annotations

import os
import socket
from typing import cast

import trio
import trio.testing

from ..ipc.channel import WorkerChannel, socketpair
from ..ipc.messages import NewConn, NewConns, Poll
from .dispatcher import Dispatcher
from .policies import Policy, RoundRobin
from .process import WorkerProcess, WorkerState


def open_fd_count() -> int:
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
        self.baseline = open_fd_count()
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
        assert open_fd_count() == self.baseline, "a descriptor was left open"


def fill_with_queue(worker: WorkerProcess) -> int:
    """The worker stops reading its channel: Polls until one waits in the channel's
    own queue; how many were sent."""
    sent = 1
    while worker.channel.send_nowait(Poll()):
        sent += 1
    return sent


def fill_socket(worker: WorkerProcess) -> int:
    """Polls until the socket refuses one (nothing queued); how many went."""
    sent = 0
    while worker.channel.try_send(Poll()):
        sent += 1
    return sent
