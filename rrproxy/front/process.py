"""The front's view of one worker process (one incarnation of a slot)."""

from __future__ import annotations

import enum
import os
import signal
import time
from collections import deque
from dataclasses import dataclass, field

import trio

from ..ipc.channel import ChannelClosed, QueueFull, WorkerChannel
from ..ipc.messages import Message
from .spawner import ChildProcess

#: Handoffs a worker may leave unanswered before round-robin prefers others. A
#: worker answers once it has read from a connection, so a blocked loop fills this.
SOFT_WINDOW = 8
#: Beyond this the worker gets nothing more until it answers.
HARD_WINDOW = 1024
#: A worker holding unanswered handoffs that has said nothing at all for this long is
#: stalled (its loop is blocked, or the process is stopped): it gets no new
#: connection until it speaks again. Judged by the worker's own messages (a live loop
#: sends Stats every second), never by whether clients sent bytes: an idle connection
#: stays unanswered by design, and must not make a healthy worker look stalled.
STALL_AFTER = 1.5


_PAGE_SIZE = os.sysconf("SC_PAGE_SIZE")
_CLOCK_TICKS = os.sysconf("SC_CLK_TCK")


class WorkerState(enum.Enum):
    """Where a worker process is in its life; only READY ones get connections."""

    STARTING = "starting"
    READY = "ready"
    DRAINING = "draining"
    STOPPED = "stopped"


@dataclass(eq=False, slots=True)
class PendingConn:
    """A connection the front accepted and still holds: queued, or handed to a worker
    that has not yet answered. Its socket is closed only once a worker holds it."""

    conn_id: int
    #: The accepted connection's file descriptor (the front never does I/O on it).
    fd: int
    #: The client's address (for ip-hash).
    client: str | None = None
    #: trio.current_time() when it joined the queue (0: handed at once).
    queued_at: float = 0.0
    #: trio.current_time() when it was last handed to a worker.
    handed_at: float = 0.0


class WorkerProcess:
    """One worker process of a slot: its channel, state and last reported counts.
    This is what the policies choose from (their `Candidate`)."""

    def __init__(
        self,
        slot_id: int,
        process: ChildProcess,
        channel: WorkerChannel,
        limit_concurrency: int | None = None,
    ) -> None:
        self.slot_id = slot_id
        self.limit_concurrency = limit_concurrency
        self.process = process
        self.channel = channel
        self.pid: int = process.pid
        self.state = WorkerState.STARTING
        self.started_at = time.time()
        self.ready = trio.Event()
        self.exited = trio.Event()
        self.ever_ready = False
        self.ready_at: float | None = None
        self.failure: str | None = None
        #: Handed connections the worker has not answered, oldest first.
        self.unacked: dict[int, PendingConn] = {}
        #: Messages dropped because the worker left its channel unread (QueueFull).
        self.dropped_messages = 0
        #: A client reached this worker (it took or accepted a connection).
        self.had_clients = False
        #: After a worker gives a connection back, it gets none until this time.
        self.paused_until = 0.0
        self.last_cpu_seconds = 0.0
        self.connections_total = 0
        self.connections_active = 0
        self.requests_total = 0
        self.statuses: dict[int, int] = {}
        self.latency_counts: list[int] = []
        self.latency_sum = 0.0
        self.stats_received = 0
        #: (time, requests_total) of the last few reports, for requests per second.
        self.rate_samples: deque[tuple[float, int]] = deque(maxlen=6)
        self.last_heard = trio.current_time()

    @property
    def slot(self) -> int:
        """The slot id, under the name the policy interface gives it (policies.py's
        Candidate, documented for custom policies in the README)."""
        return self.slot_id

    @property
    def accepting(self) -> bool:
        """It may be handed a connection now: ready, reading its channel, not paused."""
        if self.paused_until and trio.current_time() < self.paused_until:
            return False
        return (
            self.state is WorkerState.READY
            and not self.channel_full
            and not self.channel.closed
            and len(self.unacked) < HARD_WINDOW
            and not self.stalled
        )

    def oldest_unacked_age(self) -> float:
        """Seconds the oldest unanswered handoff has waited (0 if none)."""
        unacked = self.unacked
        if not unacked:
            return 0.0
        oldest = next(iter(unacked.values()))
        return trio.current_time() - oldest.handed_at

    @property
    def stalled(self) -> bool:
        """It holds unanswered handoffs and has said nothing for STALL_AFTER."""
        return bool(self.unacked) and trio.current_time() - self.last_heard > STALL_AFTER

    def post(self, message: Message, force: bool = False) -> bool:
        """Queue a message for the worker without waiting (its task flushes the
        queue). False if it cannot be: the worker is gone, or has left more than the
        channel's bound unread (counted in dropped_messages). `force` is for small
        messages that must get through, such as Stop."""
        try:
            self.channel.send_nowait(message, force)
        except ChannelClosed:
            return False
        except QueueFull:
            self.dropped_messages += 1
            return False
        return True

    def process_state(self) -> str | None:
        """The kernel's one-letter state of the process (R, S, D, T for stopped, t
        for traced...), or None once it is gone."""
        try:
            with open(f"/proc/{self.pid}/stat") as stat:
                return stat.read().rsplit(")", 1)[1].split()[0]
        except (OSError, IndexError):
            return None

    @property
    def has_room(self) -> bool:
        """Accepting, under the soft handoff window and under --limit-concurrency."""
        unacked = len(self.unacked)
        if not self.accepting or unacked >= SOFT_WINDOW:
            return False
        limit = self.limit_concurrency
        return limit is None or self.connections_active + unacked < limit

    @property
    def load(self) -> int:
        """Open connections as last reported, plus those handed and not answered."""
        return self.connections_active + len(self.unacked)

    @property
    def channel_full(self) -> bool:
        """Its channel has no room now: messages wait in its queue, or a handoff was
        refused and the socket has not turned writable since. Read from the channel
        itself (its flusher clears it), never a mark of our own: a worker may make
        room without answering anything, and must then get connections again."""
        return self.channel.blocked_since is not None

    @property
    def request_rate(self) -> float:
        """Requests per second over its last few reports."""
        samples = self.rate_samples
        if len(samples) < 2:
            return 0.0
        (t0, r0), (t1, r1) = samples[0], samples[-1]
        return (r1 - r0) / (t1 - t0) if t1 > t0 else 0.0

    def cpu_seconds(self) -> float | None:
        """User + system CPU time, from /proc (the last reading is kept in
        last_cpu_seconds: once the process is gone, the slot's total keeps it)."""
        try:
            with open(f"/proc/{self.pid}/stat") as stat:
                fields = stat.read().rsplit(")", 1)[1].split()
            self.last_cpu_seconds = (int(fields[11]) + int(fields[12])) / _CLOCK_TICKS
            return self.last_cpu_seconds
        except (OSError, ValueError, IndexError):
            return None

    def rss_bytes(self) -> int | None:
        """Resident memory, from /proc (None once the process is gone)."""
        try:
            with open(f"/proc/{self.pid}/statm") as statm:
                return int(statm.read().split()[1]) * _PAGE_SIZE
        except (OSError, ValueError, IndexError):
            return None

    def kill(self) -> None:
        """SIGKILL, tolerating a process that is already gone."""
        if self.process.returncode is None:
            try:
                self.process.send_signal(signal.SIGKILL)
            except ProcessLookupError:
                pass

    def describe_exit(self) -> str:
        """How the process ended, for logs and /status: "exit code 1", "signal SIGKILL"."""
        code = self.process.returncode
        if code is None:
            return "still running"
        if code < 0:
            try:
                return f"signal {signal.Signals(-code).name}"
            except ValueError:
                return f"signal {-code}"
        return f"exit code {code}"

    def __repr__(self) -> str:
        return f"<worker {self.slot_id} pid {self.pid} {self.state.value}>"


@dataclass(eq=False)
class Slot:
    """A stable worker id (1..N). Its process changes on restart, reload and
    recycling; during a replacement the old process drains beside the new one."""

    id: int
    current: WorkerProcess | None = None
    restarts: int = 0
    #: Set by scale-down: when its worker exits, the slot ends instead of restarting.
    removed: bool = False
    #: A replacement is under way (reload, memory or request limit).
    replacing: bool = False
    #: A recycle asked for while a replacement was under way.
    recycle_pending: str | None = None
    #: Set when the replacement under way ends (however it ends).
    replacement_done: trio.Event = field(default_factory=trio.Event)
    #: The replacement being started (not yet current), if any.
    incoming: WorkerProcess | None = None
    last_exit: str | None = None
    #: One of the slot's workers has been ready (boot waits for every slot's first).
    ever_ready: bool = False
    #: Workers of this slot that died before they served anyone, in a row (see
    #: backoff.CRASH_LOOP_AFTER).
    crashes: int = 0
    #: Seconds the slot waits before its next start, while it is backing off.
    backoff: float = 0.0
    #: trio.current_time() at which the backoff ends (0: not backing off).
    restart_at: float = 0.0
    #: Counts of this slot's earlier processes (status totals are per slot).
    past_connections: int = 0
    past_requests: int = 0
    past_statuses: dict[int, int] = field(default_factory=dict)
    past_latency_counts: list[int] = field(default_factory=list)
    past_latency_sum: float = 0.0
    #: CPU seconds of the slot's earlier processes (as last read from /proc), so the
    #: slot's CPU counter survives restarts and reloads like its request count.
    past_cpu_seconds: float = 0.0
    #: Every live process of the slot: the current one, and one draining beside it.
    processes: list[WorkerProcess] = field(default_factory=list)

    def fold(self, worker: WorkerProcess) -> None:
        """A process of this slot has exited: keep its counts in the slot's totals."""
        self.past_connections += worker.connections_total
        self.past_requests += worker.requests_total
        for code, count in worker.statuses.items():
            self.past_statuses[code] = self.past_statuses.get(code, 0) + count
        if worker.latency_counts:
            if not self.past_latency_counts:
                self.past_latency_counts = [0] * len(worker.latency_counts)
            for i, count in enumerate(worker.latency_counts):
                self.past_latency_counts[i] += count
        self.past_latency_sum += worker.latency_sum
        self.past_cpu_seconds += worker.last_cpu_seconds
