"""Supervisor: worker slots 1..N, each running one worker process at a time (two
while it is being replaced).

It spawns fresh interpreters (never a fork of the running trio front), restarts
workers that exit (with exponential backoff per slot), scales, and stops them
gracefully. Replacing workers without dropping a request lives in `replace.py`,
health checks in `health.py`, messages in `routing.py`. The front is the single
source of truth for which workers exist and in which state; workers report, the
supervisor decides.

Each worker process is owned by one task (`_run_worker`): it runs the process's
link and the flusher of its channel, so anything that goes wrong with one worker
(it dies with messages queued, it floods us) ends that task, never the front.
"""

from __future__ import annotations

import logging
import socket
from collections.abc import Callable

import trio

from ..config import Config
from ..ipc.channel import WorkerChannel, socketpair
from ..ipc.messages import Stop
from ..state.memory import MemoryStore
from . import health
from .dispatcher import Dispatcher
from .link import WorkerLink
from .process import Slot, WorkerProcess, WorkerState
from .replace import Replacer
from .routing import Router
from .spawner import BootError, Spawner

log = logging.getLogger("rrproxy.front")

BACKOFF_INITIAL = 0.1
BACKOFF_MAX = 10.0
#: A worker that stayed up this long resets its slot's backoff.
BACKOFF_RESET_AFTER = 30.0
#: A worker that dies before it is ready, or within EARLY_DEATH of it before any
#: client reached it, "could not stay up". A slot whose workers do so this many times
#: in a row is crash-looping: it keeps retrying (backing off up to BACKOFF_MAX) and is
#: reported. rrproxy exits (status 3) only when every slot is crash-looping. A worker
#: that served a client and died (a request that crashes it, a kill, OOM) proves the
#: code runs: that never counts, so no client can stop the server by crashing
#: workers. (systemd's and PM2's restart limits are per unit/app in the same way.)
CRASH_LOOP_AFTER = 5
EARLY_DEATH = 5.0
#: Bytes of messages the front queues for a worker that does not read its channel;
#: beyond that its messages are dropped and it is replaced.
CHANNEL_BACKLOG = 4 * 1024 * 1024


def _proved_itself(worker: WorkerProcess, now: float) -> bool:
    """The worker got to serve: a client reached it, or it stayed up EARLY_DEATH."""
    if not worker.ever_ready or worker.ready_at is None:
        return False
    return worker.had_clients or now - worker.ready_at >= EARLY_DEATH


class RestartStorm(Exception):
    """No slot can keep a worker up: rrproxy exits 3."""


class Supervisor:
    def __init__(
        self,
        config: Config,
        listeners: list[socket.socket],
        dispatcher: Dispatcher | None,
        announce: Callable[[str], None] = print,
    ) -> None:
        self.config = config
        #: Listening sockets the workers accept from themselves (none, reuseport).
        self.listeners = listeners
        self.dispatcher = dispatcher
        self.announce = announce
        self.slots: dict[int, Slot] = {}
        #: Live worker processes, in slot order: what the policy chooses from.
        self.workers: list[WorkerProcess] = []
        self.stopping = False
        self._nursery: trio.Nursery | None = None
        #: Starts worker processes: fresh interpreters, or forks of a zygote.
        self.spawner = Spawner(config)
        self._booted = trio.Event()
        self._boot_error: BootError | None = None
        self._all_exited = trio.Event()
        #: `--state memory`: the shared state lives here, so it outlives workers.
        self.state_store = MemoryStore(trio.current_time, config.state_max_memory)
        self.router = Router(
            lambda: self.workers, lambda: self.slots, self._channel_overflow, self.state_store
        )
        self.replacer = Replacer(self)

    @property
    def nursery(self) -> trio.Nursery:
        assert self._nursery is not None, "the supervisor is not running"
        return self._nursery

    @property
    def reloading(self) -> bool:
        return self.replacer.reloading

    # --- running -------------------------------------------------------------------

    async def run(self, task_status: trio.TaskStatus[None] = trio.TASK_STATUS_IGNORED) -> None:
        """Start every slot; report started once all are ready. Raises BootError if
        one cannot start, RestartStorm if none can stay up. Returns after
        shutdown() once every worker has exited."""
        async with trio.open_nursery() as nursery:
            self._nursery = nursery
            self.spawner.nursery = nursery
            if self.config.fork_server:
                await self.spawner.start_fork_server(booting=True)
            for slot_id in range(1, self.config.workers + 1):
                self._add_slot(slot_id, booting=True)
            nursery.start_soon(health.watch, self)
            await self._booted.wait()
            if self._boot_error is not None:
                raise self._boot_error
            task_status.started()

    def start_reload(self) -> bool:
        """Begin a rolling reload in the supervisor's own nursery; False if one is
        already under way or rrproxy is stopping."""
        if self.reloading or self.stopping:
            log.warning("a reload is already under way or rrproxy is stopping; ignoring")
            return False
        self.nursery.start_soon(self.replacer.reload)
        return True

    def recycle(self, slot: Slot, reason: str) -> None:
        self.replacer.recycle(slot, reason)

    def _add_slot(self, slot_id: int, booting: bool = False) -> Slot:
        slot = Slot(slot_id)
        self.slots[slot_id] = slot
        self.nursery.start_soon(self._run_slot, slot, booting)
        return slot

    async def _run_slot(self, slot: Slot, booting: bool) -> None:
        """Keep the slot's worker running: start it, and when the slot's current
        worker exits (not merely replaced), start another after a backoff. The slot
        ends once it is removed (scaled down) or rrproxy stops, and its last
        process has exited."""
        while True:
            worker = slot.current
            if worker is None:
                if slot.replacing:
                    # The replacement under way fills the slot (or fails: then we
                    # start one ourselves).
                    await slot.replacement_done.wait()
                    continue
                if self.stopping or slot.removed:
                    break
                if slot.restart_at:
                    await trio.sleep_until(slot.restart_at)
                    slot.restart_at = 0.0
                    continue
                worker = await self.start_worker(slot)
                if worker is None:  # could not even spawn a process
                    self._schedule_restart(slot, 0.0)
                    continue
                slot.current = worker
            await worker.exited.wait()
            if slot.current is not worker:
                continue  # replaced (reload, recycling): the new one is ours now
            slot.current = None
            slot.last_exit = worker.failure or worker.describe_exit()
            if self.stopping or slot.removed:
                continue
            if booting and not worker.ever_ready and not self._booted.is_set():
                reason = worker.failure or (
                    f"worker {slot.id} exited ({worker.describe_exit()}) before it was ready"
                )
                self._fail_boot(BootError(reason))
                return
            booting = False
            self._worker_died(slot, worker)
        if slot.removed and self.slots.get(slot.id) is slot:
            del self.slots[slot.id]

    def _worker_died(self, slot: Slot, worker: WorkerProcess) -> None:
        now = trio.current_time()
        up_for = now - worker.ready_at if worker.ready_at else 0.0
        slot.restarts += 1
        if _proved_itself(worker, now):
            slot.crashes = 0
        else:
            slot.crashes += 1
        self._schedule_restart(slot, up_for)
        log.warning(
            "worker %d (pid %d) %s (%s); restart %d in %.1f s",
            slot.id,
            worker.pid,
            "exited" if worker.ever_ready else "failed to start",
            slot.last_exit,
            slot.restarts,
            slot.backoff,
        )
        if slot.crashes == CRASH_LOOP_AFTER:
            log.error(
                "worker %d cannot stay up (%d deaths in a row before it served anyone: %s); "
                "it keeps retrying every %g s at most while the other workers serve",
                slot.id,
                slot.crashes,
                slot.last_exit,
                BACKOFF_MAX,
            )
        live = [s for s in self.slots.values() if not s.removed]
        if live and all(self.crash_looping(s) for s in live):
            raise RestartStorm(
                "no worker can stay up: workers keep dying right after they start (each of "
                f"the {len(live)} slots, {CRASH_LOOP_AFTER} times in a row); "
                f"last: {slot.last_exit}"
            )

    def crash_looping(self, slot: Slot) -> bool:
        """The slot's workers keep dying before they serve anyone, and the one it has
        now (if any) has not proved otherwise yet."""
        if slot.crashes < CRASH_LOOP_AFTER:
            return False
        current = slot.current
        return current is None or not _proved_itself(current, trio.current_time())

    @staticmethod
    def _schedule_restart(slot: Slot, up_for: float) -> None:
        if up_for >= BACKOFF_RESET_AFTER:
            slot.backoff = 0.0
        slot.backoff = min(slot.backoff * 2, BACKOFF_MAX) if slot.backoff else BACKOFF_INITIAL
        slot.restart_at = trio.current_time() + slot.backoff

    def _check_booted(self) -> None:
        """Boot is complete once every slot still wanted has had a ready worker (a
        slot scaled away during boot does not hold it up), or with --ready-strategy
        first, once one has."""
        live = [s for s in self.slots.values() if not s.removed]
        ready = any if self.config.ready_strategy == "first" else all
        if live and ready(s.ever_ready for s in live):
            self._booted.set()

    def _fail_boot(self, error: BootError) -> None:
        if self._boot_error is None:
            self._boot_error = error
        self.stopping = True
        self._booted.set()

    def _worker_ready(self, worker: WorkerProcess) -> None:
        worker.state = WorkerState.READY
        worker.last_heard = worker.ready_at = trio.current_time()
        worker.ever_ready = True
        worker.ready.set()
        slot = self.slots.get(worker.slot)
        if slot is not None:
            slot.ever_ready = True
        if not self._booted.is_set():
            self.announce(f"rrproxy: worker {worker.slot} ready (pid {worker.pid})")
            self._check_booted()
        else:
            log.info("worker %d ready (pid %d)", worker.slot, worker.pid)
        if self.dispatcher is not None:
            self.dispatcher.pump()

    # --- one worker process ------------------------------------------------------------

    async def start_worker(self, slot: Slot) -> WorkerProcess | None:
        """Spawn a worker for the slot and start the task that owns it."""
        front_end, worker_end = socketpair()
        try:
            process = await self.spawner.spawn(slot.id, worker_end)
        except OSError as exc:
            front_end.close()
            log.error("cannot start worker %d: %s", slot.id, exc)
            return None
        finally:
            # Only the worker may hold its end: when it dies, we see EOF.
            worker_end.close()
        channel = WorkerChannel(front_end, accepts_fds=False, max_backlog=CHANNEL_BACKLOG)
        worker = WorkerProcess(slot.id, process, channel, self.config.worker.limit_concurrency)
        self.workers.append(worker)
        self.workers.sort(key=lambda w: w.slot)
        slot.processes.append(worker)
        self.nursery.start_soon(self._run_worker, worker, slot)
        if self.stopping:
            # The stop began while this process was being spawned, so shutdown() did
            # not see it: Stop is the first thing it reads, and it exits at once.
            self.stop_worker(worker)
        return worker

    async def _run_worker(self, worker: WorkerProcess, slot: Slot) -> None:
        link = WorkerLink(
            worker,
            self.config,
            self.listeners,
            self.dispatcher,
            on_ready=self._worker_ready,
            on_retire=self._on_retire,
            on_user_message=self.router.on_user_message,
            on_state_request=self.router.on_state_request,
            quiet_failures=lambda: not self._booted.is_set(),
            worker_count=lambda: self.worker_count,
        )
        try:
            async with trio.open_nursery() as nursery:
                nursery.start_soon(link.run)
                nursery.start_soon(worker.channel.run_flusher)
                # The process's exit, not the channel's EOF: a child the handler
                # started may hold the channel open long after the worker died.
                await worker.process.wait()
                # What the worker said before it died is still in the socket buffer:
                # read it now (a Taken there means the worker held that connection).
                link.read_remaining()
                nursery.cancel_scope.cancel()
        finally:
            with trio.CancelScope(shield=True):
                worker.kill()
                with trio.move_on_after(5):
                    await worker.process.wait()
            worker.state = WorkerState.STOPPED
            worker.channel.close()
            if worker in self.workers:
                self.workers.remove(worker)
            if not self.workers and self.stopping:
                self._all_exited.set()
            if self.dispatcher is not None:
                self.dispatcher.reclaim(worker)
            self.spawner.exited(worker.process)
            if worker in slot.processes:
                slot.processes.remove(worker)
            slot.fold(worker)
            worker.exited.set()

    def stop_worker(self, worker: WorkerProcess, timeout: float | None = None) -> None:
        """Out of rotation at once; the worker drains and exits (killed by the health
        check or shutdown if it does not)."""
        if worker.state is WorkerState.STOPPED:
            return
        worker.state = WorkerState.DRAINING
        timeout = self.config.worker.graceful_timeout if timeout is None else timeout
        worker.post(Stop(timeout), force=True)

    def _on_retire(self, worker: WorkerProcess, reason: str) -> None:
        """A worker asked to be replaced (request limit) or broke the protocol."""
        slot = self.slots.get(worker.slot)
        if slot is None or slot.current is not worker or worker.state is not WorkerState.READY:
            return
        self.recycle(slot, reason)

    def _channel_overflow(self, worker: WorkerProcess) -> None:
        """The worker leaves its channel unread: its messages are being dropped."""
        if worker.dropped_messages != 1:
            return  # said once per process
        log.error(
            "worker %d (pid %d) leaves its messages unread (%d bytes queued); messages to "
            "it are dropped and it is being replaced",
            worker.slot,
            worker.pid,
            worker.channel.backlog_bytes,
        )
        self._on_retire(worker, "it does not read its messages")

    # --- scaling ---------------------------------------------------------------------------

    @property
    def worker_count(self) -> int:
        return sum(1 for slot in self.slots.values() if not slot.removed)

    def scale_up(self) -> None:
        if self.stopping:
            return
        slot_id = 1
        while slot_id in self.slots:
            slot_id += 1
        self._add_slot(slot_id)
        log.info("scaling up: worker %d added (%d workers)", slot_id, self.worker_count)
        self.router.announce_count(self.worker_count)

    def scale_down(self) -> None:
        live = sorted(s.id for s in self.slots.values() if not s.removed)
        if len(live) <= 1:
            log.warning("scaling down: already at 1 worker")
            return
        # The highest slot leaves, unless another is crash-looping: losing a
        # healthy worker and keeping a broken one would help nobody.
        looping = [i for i in live if self.crash_looping(self.slots[i])]
        slot = self.slots[looping[-1] if looping else live[-1]]
        slot.removed = True
        if slot.current is not None:
            self.stop_worker(slot.current)
        if not self._booted.is_set():
            self._check_booted()
        log.info(
            "scaling down: worker %d drains and leaves (%d workers)", slot.id, self.worker_count
        )
        self.router.announce_count(self.worker_count)

    def scale_to(self, count: int) -> None:
        while self.worker_count < count:
            self.scale_up()
        while self.worker_count > max(count, 1):
            self.scale_down()

    # --- stopping ------------------------------------------------------------------------

    async def shutdown(self, timeout: float) -> None:
        """Graceful stop: every worker drains (finishing in-flight requests) and exits;
        whatever is left after `timeout` is killed. Returns when all have exited."""
        self.stopping = True
        if not self.workers:
            return
        for worker in list(self.workers):
            self.stop_worker(worker, timeout)
        # The workers enforce `timeout` themselves; the margin covers their exit.
        with trio.move_on_after(timeout + 2.0):
            await self._all_exited.wait()
        for worker in list(self.workers):
            log.warning(
                "worker %d (pid %d) did not stop in time; killing it", worker.slot, worker.pid
            )
            worker.kill()
        await self._all_exited.wait()
        self.spawner.close()

    def kill_all(self) -> None:
        self.stopping = True
        for worker in list(self.workers):
            worker.kill()
