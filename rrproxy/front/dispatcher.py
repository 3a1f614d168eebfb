"""The front's connection handoff under `rr`: a bounded queue of accepted connections
and the rule that a connection is the front's until a worker has it.

Everything here is synchronous (sends never wait: a worker whose channel is full is
passed over), so handing out costs no task switch. Connections accepted together are
planned first and then sent in one NewConns message per worker: one sendmsg with
several fds, not one per connection.
"""

from __future__ import annotations

import itertools
import logging
from collections import deque
from collections.abc import Callable, Sequence

import trio

from ..fds import close_quietly
from ..ipc.channel import ChannelClosed
from ..ipc.messages import MAX_BATCH, NewConn, NewConns
from .policies import Policy
from .process import PendingConn, WorkerProcess

log = logging.getLogger("rrproxy.front")

#: How long a queued connection waits for a worker with room before it goes to one
#: without (a worker at --limit-concurrency then answers 503). The workers' counts
#: reach the front a moment after a connection closes; this bridges that moment.
HOLD_FOR_ROOM = 0.05
#: A worker that gives a connection back (draining, or out of fds) is skipped this
#: long, so the connection does not bounce between the front and it.
REJECT_PAUSE = 0.1


class Dispatcher:
    """Hands accepted connections to workers (rr, least-conn, ip-hash): asks the policy, sends each
    worker its share in one message, and holds every connection until a worker answers Taken, re-
    handing it if the worker rejects it or dies first."""

    def __init__(
        self,
        policy: Policy,
        workers: Callable[[], Sequence[WorkerProcess]],
        max_held: int,
        max_connections: int | None = None,
    ) -> None:
        self.policy = policy
        self._workers = workers
        self.max_held = max_held
        self.max_connections = max_connections
        self.queue: deque[PendingConn] = deque()
        #: Connections the front holds: queued plus handed-but-unanswered.
        self.held = 0
        self.handed_total = 0
        self.rehanded_total = 0
        self._ids = itertools.count(1)
        self._room = trio.Event()
        self._room.set()
        self._idle = trio.Event()
        self._idle.set()
        self._queued = trio.Event()

    # --- intake --------------------------------------------------------------------

    def submit(self, fd: int, client: str | None = None) -> None:
        """One connection just accepted (see submit_many)."""
        self.submit_many([(fd, client)])

    def submit_many(self, accepted: Sequence[tuple[int, str | None]]) -> None:
        """Connections just accepted, as (fd, client address)."""
        ids = self._ids
        conns = [PendingConn(next(ids), fd, client=client) for fd, client in accepted]
        self.held += len(conns)
        # Behind a queue, in order: nobody overtakes a connection already waiting.
        leftover = conns if self.queue else self._hand_out(conns, require_room=True)
        if leftover:
            now = trio.current_time()
            for conn in leftover:
                conn.queued_at = now
            self.queue.extend(leftover)
            self._queued.set()
        self._update_events()

    def room(self) -> int:
        """How many more connections the acceptor may take now (see `full`)."""
        room = self.max_held - self.held
        limit = self.max_connections
        if limit is not None:
            room = min(room, limit - self.held - sum(w.connections_active for w in self._workers()))
        return room

    @property
    def full(self) -> bool:
        """Whether the acceptor must pause: the front holds its limit, or all open
        connections (held here plus those the workers report) reach --max-connections."""
        if self.held >= self.max_held:
            return True
        limit = self.max_connections
        if limit is None:
            return False
        return self.held + sum(w.connections_active for w in self._workers()) >= limit

    def load_changed(self) -> None:
        """A worker reported a new count of open connections."""
        self._pump_or_update()

    def channel_room(self) -> None:
        """A worker's channel that had refused a handoff has room again (its
        flusher saw it writable): what is queued may go to it now, not at the next
        pump."""
        self._pump_or_update()

    def _pump_or_update(self) -> None:
        """Something freed room: hand out what is queued, or just update the events."""
        if self.queue:
            self.pump()
        else:
            self._update_events()

    async def wait_for_room(self) -> None:
        """Until the acceptor may accept again (see `full`)."""
        while self.full:
            await self._room.wait()

    async def wait_queue_empty(self) -> None:
        """Until every accepted connection has been handed to some worker."""
        while self.queue:
            await self._idle.wait()

    # --- handing out ---------------------------------------------------------------

    def _hand_out(self, conns: Sequence[PendingConn], require_room: bool) -> list[PendingConn]:
        """Plan a worker for each connection (in order, stopping at the first one no
        worker can take), send each worker its share in one message, and return the
        connections that did not go (to be queued at the head, in order)."""
        workers = self._workers()
        choose = self.policy.choose
        now = trio.current_time()
        plan: dict[WorkerProcess, list[PendingConn]] = {}
        failed: list[PendingConn] = []
        planned = 0
        for conn in conns:
            worker = choose(workers, require_room, conn.client)
            if worker is None:
                break
            # Counted as handed at once, so the policy sees this worker's window fill.
            worker.unacked[conn.conn_id] = conn
            conn.handed_at = now
            share = plan.setdefault(worker, [])
            share.append(conn)
            planned += 1
            if len(share) == MAX_BATCH:
                # What it did not take goes back to the queue with the rest (a share
                # that fills before the channel does is the ip-hash burst case).
                failed += self._send(worker, plan.pop(worker))
        for worker, share in plan.items():
            failed += self._send(worker, share)
        if failed:
            # Each worker that did not take its share is out of the choice now
            # (channel full or closed), so the others get a chance at once rather
            # than at the next pump, HOLD_FOR_ROOM later. At most one round per
            # worker: every round rules at least one out.
            failed.sort(key=lambda c: c.conn_id)
            return self._hand_out(failed + list(conns[planned:]), require_room)
        return list(conns[planned:])

    def _send(self, worker: WorkerProcess, share: list[PendingConn]) -> list[PendingConn]:
        """One message to `worker` with its planned connections; those it did not take."""
        if len(share) == 1:
            message: NewConn | NewConns = NewConn(share[0].conn_id)
        else:
            message = NewConns(tuple(conn.conn_id for conn in share))
        try:
            sent = worker.channel.try_send(message, [conn.fd for conn in share])
        except ChannelClosed:
            # Its end of the channel is gone: it is dying; its supervisor will see the
            # exit. Meanwhile nobody hands it anything.
            worker.channel.close()
            sent = False
        if sent:
            self.handed_total += len(share)
            return []
        # Refused: the channel now counts as full (worker.channel_full) until its
        # flusher sees room and calls channel_room().
        for conn in share:
            worker.unacked.pop(conn.conn_id, None)
        return share

    def pump(self) -> None:
        """Hand queued connections out while some worker can take one: one with room,
        or any accepting one once the connection has waited HOLD_FOR_ROOM."""
        queue = self.queue
        if queue:
            patience_over = trio.current_time() - HOLD_FOR_ROOM
            while queue:
                # The queue runs oldest first: those that waited HOLD_FOR_ROOM may go to
                # a worker without room, the others wait for one with room.
                patient = queue[0].queued_at <= patience_over
                batch: list[PendingConn] = []
                while (
                    queue
                    and len(batch) < MAX_BATCH * 4
                    and (queue[0].queued_at <= patience_over) == patient
                ):
                    batch.append(queue.popleft())
                leftover = self._hand_out(batch, require_room=not patient)
                if leftover:
                    queue.extendleft(reversed(leftover))
                    break
        self._update_events()

    async def run(self) -> None:
        """While connections are queued, pump again every HOLD_FOR_ROOM: their wait
        for a worker with room is bounded even if no worker reports anything."""
        while True:
            await self._queued.wait()
            while self.queue:
                await trio.sleep(HOLD_FOR_ROOM)
                self.pump()
            self._queued = trio.Event()

    def _update_events(self) -> None:
        if self.full:
            if self._room.is_set():
                self._room = trio.Event()
        else:
            self._room.set()
        if self.queue:
            if self._idle.is_set():
                self._idle = trio.Event()
        else:
            self._idle.set()

    # --- answers from workers ---------------------------------------------------------

    def _answered(self, worker: WorkerProcess, conn_id: int, verb: str) -> PendingConn | None:
        """The handed connection `worker` answered for, or None for an id it was
        never handed."""
        conn = worker.unacked.pop(conn_id, None)
        if conn is None:
            log.warning("worker %d %s unknown connection %d", worker.slot_id, verb, conn_id)
        return conn

    def taken(self, worker: WorkerProcess, conn_id: int) -> None:
        """The worker holds connection `conn_id` now: our copy of its fd can go."""
        conn = self._answered(worker, conn_id, "answered for")
        if conn is None:
            return
        close_quietly(conn.fd)
        self.held -= 1
        self._pump_or_update()

    def rejected(self, worker: WorkerProcess, conn_id: int) -> None:
        """The worker gave connection `conn_id` back (draining, or out of fds): it goes
        to the head of the queue, and this worker is passed over for REJECT_PAUSE."""
        conn = self._answered(worker, conn_id, "rejected")
        if conn is None:
            return
        self.rehanded_total += 1
        worker.paused_until = trio.current_time() + REJECT_PAUSE
        self.queue.appendleft(conn)
        self._queued.set()
        self.pump()

    def reclaim(self, worker: WorkerProcess) -> None:
        """The worker is gone. Node leaves connections handed to a dying worker in
        limbo; we still hold them, and the worker never read from them, so they go
        back to the head of the queue (in arrival order) for another worker."""
        if not worker.unacked:
            return
        conns = sorted(worker.unacked.values(), key=lambda c: c.conn_id)
        worker.unacked.clear()
        self.rehanded_total += len(conns)
        log.info(
            "re-handing %d connection(s) that worker %d (pid %d) never read",
            len(conns),
            worker.slot_id,
            worker.pid,
        )
        self.queue.extendleft(reversed(conns))
        self._queued.set()
        self.pump()

    def close_all(self) -> None:
        """At exit: whatever is still queued cannot be served any more."""
        while self.queue:
            close_quietly(self.queue.popleft().fd)
        self.held = 0
