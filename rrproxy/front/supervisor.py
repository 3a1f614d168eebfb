"""Supervisor: worker slots 1..N, each running one worker process at a time (two
while it is being replaced).

It spawns fresh interpreters (never a fork of the running trio front), restarts
workers that exit (with exponential backoff per slot), scales, and stops them
gracefully. Replacing workers without dropping a request lives in `replace.py`,
health checks in `health.py`, messages in `routing.py`, the restart rule (backoff,
crash-looping, giving up) in `backoff.py`. The front is the single source of truth
for which workers exist and in which state; workers report, the supervisor decides.

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
from ..ipc.channel import WorkerChannel
from ..ipc.messages import Stop
from ..state.memory import MemoryStore
from . import backoff, health
from .backoff import RestartStorm
from .dispatcher import Dispatcher
from .link import WorkerLink
from .process import Slot, WorkerProcess, WorkerState
from .replace import Replacer
from .routing import Router
from .spawner import BootError, Spawner

__all__ = ["RestartStorm", "Supervisor"]  # run() raises RestartStorm: main.py catches it

log = logging.getLogger("rrproxy.front")

#: Bytes of messages the front queues for a worker that does not read its channel;
#: beyond that its messages are dropped and it is replaced.
CHANNEL_BACKLOG = 4 * 1024 * 1024


class Supervisor:
    """The worker slots and their processes: the single owner of every worker."""

    def __init__(
        self,
        config: Config,
        listeners: list[socket.socket],
        dispatcher: Dispatcher | None,
        announce: Callable[[str], None] = print,
        spawner: Spawner | None = None,
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
        #: Starts worker processes: fresh interpreters, or forks of a zygote (tests
        #: pass a fake one).
        self.spawner = Spawner(config) if spawner is None else spawner
        self._booted = trio.Event()
        self._boot_error: BootError | None = None
        self._all_exited = trio.Event()
        #: `--state memory`: the shared state lives here, so it outlives workers.
        self.state_store = MemoryStore(trio.current_time, config.state_max_memory)
        self.replacer = Replacer(self)
        self.router = Router(
            lambda: self.workers, lambda: self.slots, self.replacer.unread, self.state_store
        )

    @property
    def nursery(self) -> trio.Nursery:
        """Where the slots' and workers' tasks run (only while run() runs)."""
        assert self._nursery is not None, "the supervisor is not running"
        return self._nursery

    @property
    def reloading(self) -> bool:
        """A rolling reload is under way."""
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
        if not self.replacer.begin_reload():
            return False
        self.nursery.start_soon(self.replacer.run_reload)
        return True

    def recycle(self, slot: Slot, reason: str) -> None:
        """Replace the slot's worker (a new one first, then the old one drains)."""
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
                    now = trio.current_time()
                    self._back_off(
                        slot, backoff.after_spawn_failure(slot.crashes, slot.backoff, now)
                    )
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
        """The slot's current worker exited: back off, then restart; give up (raise
        RestartStorm) only if now every slot is crash-looping."""
        now = trio.current_time()
        restart = backoff.after_death(slot.crashes, slot.backoff, worker, now)
        slot.restarts += 1
        self._back_off(slot, restart)
        log.warning(
            "worker %d (pid %d) %s (%s); restart %d in %.1f s",
            slot.id,
            worker.pid,
            "exited" if worker.ever_ready else "failed to start",
            slot.last_exit,
            slot.restarts,
            slot.backoff,
        )
        if restart.starts_looping:
            log.error(
                "worker %d cannot stay up (%d deaths in a row before it served anyone: %s); "
                "it keeps retrying every %g s at most while the other workers serve",
                slot.id,
                slot.crashes,
                slot.last_exit,
                backoff.BACKOFF_MAX,
            )
        live = [s for s in self.slots.values() if not s.removed]
        if backoff.restart_storm(((s.crashes, s.current) for s in live), now):
            raise RestartStorm(len(live), slot.last_exit)

    def crash_looping(self, slot: Slot) -> bool:
        """The slot's workers keep dying before they serve anyone (backoff.py's rule)."""
        return backoff.crash_looping(slot.crashes, slot.current, trio.current_time())

    @staticmethod
    def _back_off(slot: Slot, restart: backoff.Restart) -> None:
        slot.crashes, slot.backoff, slot.restart_at = restart.crashes, restart.delay, restart.at

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
        slot = self.slots.get(worker.slot_id)
        if slot is not None:
            slot.ever_ready = True
        if not self._booted.is_set():
            self.announce(f"rrproxy: worker {worker.slot_id} ready (pid {worker.pid})")
            self._check_booted()
        else:
            log.info("worker %d ready (pid %d)", worker.slot_id, worker.pid)
        if self.dispatcher is not None:
            self.dispatcher.pump()

    # --- one worker process ------------------------------------------------------------

    async def start_worker(self, slot: Slot) -> WorkerProcess | None:
        """Spawn a worker for the slot and start the task that owns it; None if no
        process could be started."""
        started = await self.spawner.start(slot.id)
        if started is None:
            return None
        process, front_end = started
        channel = WorkerChannel(front_end, accepts_fds=False, max_backlog=CHANNEL_BACKLOG)
        if self.dispatcher is not None:
            # A worker whose channel refused a handoff gets what waits as soon as its
            # flusher (run in _run_worker) sees room again.
            channel.on_room = self.dispatcher.channel_room
        worker = WorkerProcess(slot.id, process, channel, self.config.worker.limit_concurrency)
        self.workers.append(worker)
        self.workers.sort(key=lambda w: w.slot_id)
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
            on_retire=self.replacer.retire,
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

    # --- scaling ---------------------------------------------------------------------------

    @property
    def worker_count(self) -> int:
        """Slots wanted (not scaled away), whatever their workers are doing."""
        return sum(1 for slot in self.slots.values() if not slot.removed)

    def scale_up(self) -> None:
        """One slot more, with the lowest free id."""
        if self.stopping:
            return
        slot_id = 1
        while slot_id in self.slots:
            slot_id += 1
        self._add_slot(slot_id)
        log.info("scaling up: worker %d added (%d workers)", slot_id, self.worker_count)
        self.router.announce_count(self.worker_count)

    def scale_down(self) -> None:
        """One slot fewer (never below 1): its worker drains and the slot ends."""
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
        """Scale up or down to `count` slots (at least 1)."""
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
                "worker %d (pid %d) did not stop in time; killing it", worker.slot_id, worker.pid
            )
            worker.kill()
        await self._all_exited.wait()
        self.spawner.close()

    def kill_all(self) -> None:
        """SIGKILL every worker at once (a second SIGINT: stop now, no draining)."""
        self.stopping = True
        for worker in list(self.workers):
            worker.kill()
