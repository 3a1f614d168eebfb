"""Messages from the front to workers and between workers, and the operations on the
memory state store that the front holds.

Every send is `WorkerProcess.post`: it never waits and never raises. A worker that
leaves its channel unread past the channel's bound gets its messages dropped (the
sender is told, `rrproxy.cluster.MessageDropped`) and is retired: the front's memory
is never at the mercy of a slow worker.
"""

from __future__ import annotations

import logging
import re
from collections.abc import Callable, Iterable

import trio

from ..ipc.messages import (
    ClusterInfo,
    Message,
    Poll,
    ReopenLogs,
    Reply,
    StateRequest,
    UserMessage,
)
from ..state.memory import MemoryStore, StoreError
from .process import Slot, WorkerProcess, WorkerState

log = logging.getLogger("rrproxy.front")

#: A worker id as `UserMessage.to` gives it: ASCII digits only (str.isdigit() would
#: take "²", which int() refuses), and short (int() of 5,000 digits raises).
_WORKER_ID = re.compile(r"[1-9][0-9]{0,5}")


def valid_destination(to: str) -> bool:
    """A UserMessage's `to` that can be routed: "front", "all" or a worker id."""
    return to in ("front", "all") or _WORKER_ID.fullmatch(to) is not None


class Router:
    """Sends to workers without ever waiting, routes their messages to each other and
    runs their state operations on the memory store."""

    def __init__(
        self,
        workers: Callable[[], list[WorkerProcess]],
        slots: Callable[[], dict[int, Slot]],
        on_overflow: Callable[[WorkerProcess], None],
        state_store: MemoryStore,
    ) -> None:
        self._workers = workers
        self._slots = slots
        self._on_overflow = on_overflow
        self.state_store = state_store
        self.dropped_total = 0

    def post(self, worker: WorkerProcess, message: Message) -> bool:
        """One message to one live worker; False if it was not queued."""
        if worker.state not in (WorkerState.READY, WorkerState.DRAINING):
            return False
        if worker.post(message):
            return True
        if worker.dropped_messages:
            self.dropped_total += 1
            self._on_overflow(worker)
        return False

    def send_all(
        self, message: Message, to: Iterable[WorkerProcess] | None = None
    ) -> list[WorkerProcess]:
        """To every live worker (or those given); returns those it did not reach."""
        missed = []
        for worker in list(self._workers()) if to is None else list(to):
            if not self.post(worker, message):
                missed.append(worker)
        return missed

    def on_user_message(self, worker: WorkerProcess, message: UserMessage) -> None:
        """Route a handler's message: log it (to the front), or forward it to one
        worker or all of them (the sender included), like Node's cluster messaging.
        When the sender asked, it is told whether every recipient got it."""
        to = message.to
        error = ""
        if to == "front":
            log.info(
                "message from worker %d (pid %d): %.500r",
                worker.slot_id,
                worker.pid,
                message.payload,
            )
        else:
            outgoing = UserMessage(message.payload, to, worker.slot_id)
            if to == "all":
                targets = [w for w in self._workers() if w.state is WorkerState.READY]
            else:
                slot = self._slots().get(int(to))
                current = slot.current if slot is not None else None
                targets = [current] if current is not None else []
                if not targets:
                    error = f"worker {to} is not running"
            missed = self.send_all(outgoing, targets)
            if missed:
                ids = ", ".join(str(w.slot_id) for w in missed)
                error = f"not delivered to worker {ids}: it does not read its messages"
            if error:
                log.warning("message from worker %d dropped: %s", worker.slot_id, error)
        if message.request_id:
            self.post(worker, Reply(message.request_id, not error, None, error))

    def on_state_request(self, worker: WorkerProcess, request: StateRequest) -> None:
        """rrproxy.state with the memory backend: one operation, atomically, here."""
        try:
            value = self.state_store.apply(request.op, request.key, request.value, request.ttl)
            reply = Reply(request.request_id, True, value)
        except StoreError as exc:
            reply = Reply(request.request_id, False, None, str(exc), exc.kind)
        self.post(worker, reply)

    def announce_count(self, count: int) -> None:
        """Tell every worker how many there are now (rrproxy.cluster.worker_count)."""
        self.send_all(ClusterInfo(count))

    def reopen_logs(self) -> None:
        """SIGUSR1: every worker reopens its log file (after logrotate moved it)."""
        self.send_all(ReopenLogs())

    async def poll(self, timeout: float = 0.5) -> None:
        """Ask every worker for fresh counts and wait (briefly) for the answers."""
        waiting = {w: w.stats_received for w in self._workers() if w.state is WorkerState.READY}
        self.send_all(Poll(), list(waiting))
        with trio.move_on_after(timeout):
            while any(
                w.stats_received == seen and not w.exited.is_set() for w, seen in waiting.items()
            ):
                await trio.sleep(0.005)
