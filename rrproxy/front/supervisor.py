"""Supervisor: worker slots 1..N, each running one worker process at a time (two
while it is being replaced).

It spawns fresh interpreters (never a fork of the running trio front), restarts
workers that exit (with exponential backoff), replaces them without dropping a
request (rolling reload, memory and request limits: the new worker is ready before
the old one stops taking connections), scales, watches health, and stops them
gracefully. The front is the single source of truth for which workers exist and in
which state; workers report, the supervisor decides.
"""

from __future__ import annotations

import logging
import socket
import subprocess
import sys
from collections.abc import Callable

import trio

from ..config import Config
from ..ipc.channel import ChannelClosed, WorkerChannel, socketpair
from ..ipc.messages import (
    ClusterInfo,
    Message,
    Poll,
    ReopenLogs,
    StateReply,
    StateRequest,
    Stop,
    UserMessage,
)
from ..state_store import MemoryStore, StoreError
from .dispatcher import Dispatcher
from .link import WorkerLink
from .workers import Slot, WorkerProcess, WorkerState

log = logging.getLogger("rrproxy.front")

BACKOFF_INITIAL = 0.1
BACKOFF_MAX = 10.0
#: A worker that stayed up this long resets its slot's backoff.
BACKOFF_RESET_AFTER = 30.0
#: A worker that dies before it has been ready this long died "early". When workers
#: keep dying early and none survives, rrproxy gives up instead of looping forever.
EARLY_DEATH = 5.0
#: How often health (heartbeats, channel, memory) is checked, at most.
HEALTH_INTERVAL = 1.0


class BootError(Exception):
    """A worker could not start during the initial boot: rrproxy exits 2."""


class RestartStorm(Exception):
    """Workers keep dying right after they start: rrproxy exits 3."""


class Supervisor:
    def __init__(
        self,
        config: Config,
        listener: socket.socket,
        dispatcher: Dispatcher | None,
        announce: Callable[[str], None] = print,
    ) -> None:
        self.config = config
        self.listener = listener
        self.dispatcher = dispatcher
        self.announce = announce
        self.slots: dict[int, Slot] = {}
        #: Live worker processes, in slot order: what the policy chooses from.
        self.workers: list[WorkerProcess] = []
        self.stopping = False
        self.reloading = False
        self._nursery: trio.Nursery | None = None
        self._boot_pending = config.workers
        self._booted = trio.Event()
        self._boot_error: BootError | None = None
        self._all_exited = trio.Event()
        self._early_deaths = 0
        self._last_failure = ""
        #: `--state memory`: the shared state lives here, so it outlives workers.
        self.state_store = MemoryStore(trio.current_time)

    @property
    def nursery(self) -> trio.Nursery:
        assert self._nursery is not None, "the supervisor is not running"
        return self._nursery

    # --- running -------------------------------------------------------------------

    async def run(self, task_status: trio.TaskStatus[None] = trio.TASK_STATUS_IGNORED) -> None:
        """Start every slot; report started once all are ready. Raises BootError if
        one cannot start, RestartStorm if they keep dying. Returns after shutdown()
        once every worker has exited."""
        async with trio.open_nursery() as nursery:
            self._nursery = nursery
            for slot_id in range(1, self.config.workers + 1):
                self._add_slot(slot_id, booting=True)
            nursery.start_soon(self._watch_health)
            await self._booted.wait()
            if self._boot_error is not None:
                raise self._boot_error
            task_status.started()

    def _add_slot(self, slot_id: int, booting: bool = False) -> Slot:
        slot = Slot(slot_id)
        self.slots[slot_id] = slot
        self.nursery.start_soon(self._run_slot, slot, booting)
        return slot

    async def _run_slot(self, slot: Slot, booting: bool) -> None:
        """Keep the slot's worker running: start it, and when the slot's current
        worker exits (not merely replaced), start another after a backoff."""
        delay = BACKOFF_INITIAL
        while not self.stopping:
            worker = slot.current
            if worker is None:
                worker = await self._start_worker(slot)
                if worker is None:  # could not even spawn
                    await trio.sleep(delay)
                    delay = min(delay * 2, BACKOFF_MAX)
                    continue
                slot.current = worker
            await worker.exited.wait()
            if slot.current is not worker:
                continue  # replaced (reload, recycling): the new one is ours now
            slot.current = None
            slot.last_exit = worker.failure or worker.describe_exit()
            if self.stopping or slot.removed:
                break
            if booting and not worker.ever_ready:
                reason = worker.failure or (
                    f"worker {slot.id} exited ({worker.describe_exit()}) before it was ready"
                )
                self._fail_boot(BootError(reason))
                return
            booting = False
            up_for = trio.current_time() - worker.ready_at if worker.ready_at else 0.0
            if up_for >= BACKOFF_RESET_AFTER:
                delay = BACKOFF_INITIAL
            self._count_death(worker, up_for)
            slot.restarts += 1
            log.warning(
                "worker %d (pid %d) %s (%s); restart %d in %.1f s",
                slot.id,
                worker.pid,
                "exited" if worker.ever_ready else "failed to start",
                slot.last_exit,
                slot.restarts,
                delay,
            )
            await trio.sleep(delay)
            delay = min(delay * 2, BACKOFF_MAX)
        if slot.removed and self.slots.get(slot.id) is slot:
            del self.slots[slot.id]

    def _count_death(self, worker: WorkerProcess, up_for: float) -> None:
        if worker.ever_ready and up_for >= EARLY_DEATH:
            self._early_deaths = 0
            return
        self._early_deaths += 1
        self._last_failure = worker.failure or worker.describe_exit()
        limit = max(5, 3 * len(self.slots))
        if self._early_deaths >= limit:
            raise RestartStorm(
                f"workers keep dying right after they start ({self._early_deaths} in a row, "
                f"none stayed up {EARLY_DEATH:g} s); last: {self._last_failure}"
            )

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
        if not self._booted.is_set():
            self.announce(f"rrproxy: worker {worker.slot} ready (pid {worker.pid})")
            self._boot_pending -= 1
            if self._boot_pending == 0:
                self._booted.set()
        else:
            log.info("worker %d ready (pid %d)", worker.slot, worker.pid)
        if self.dispatcher is not None:
            self.dispatcher.pump()

    # --- one worker process ------------------------------------------------------------

    async def _start_worker(self, slot: Slot) -> WorkerProcess | None:
        """Spawn a worker for the slot and start its lifetime task."""
        front_end, worker_end = socketpair()
        try:
            process = await trio.lowlevel.open_process(
                [
                    sys.executable,
                    "-m",
                    "rrproxy.worker",
                    "--fd",
                    str(worker_end.fileno()),
                    "--slot",
                    str(slot.id),
                ],
                pass_fds=(worker_end.fileno(),),
                stdin=subprocess.DEVNULL,
            )
        except OSError as exc:
            front_end.close()
            log.error("cannot start worker %d: %s", slot.id, exc)
            return None
        finally:
            # Only the worker may hold its end: when it dies, we see EOF.
            worker_end.close()
        worker = WorkerProcess(
            slot.id, process, WorkerChannel(front_end), self.config.worker.limit_concurrency
        )
        self.workers.append(worker)
        self.workers.sort(key=lambda w: w.slot)
        slot.processes.append(worker)
        self.nursery.start_soon(self._run_worker, worker, slot)
        return worker

    async def _run_worker(self, worker: WorkerProcess, slot: Slot) -> None:
        link = WorkerLink(
            worker,
            self.config,
            self.listener,
            self.dispatcher,
            on_ready=self._worker_ready,
            on_retire=self._on_retire,
            on_user_message=self._on_user_message,
            on_state_request=self._on_state_request,
            quiet_failures=lambda: not self._booted.is_set(),
            worker_count=lambda: self.worker_count,
        )
        try:
            async with trio.open_nursery() as nursery:
                nursery.start_soon(link.run)
                await worker.process.wait()
                # The link ends at the channel's EOF, after every answer the worker
                # sent has been processed; only then is re-handing safe.
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
            if worker in slot.processes:
                slot.processes.remove(worker)
            slot.fold(worker)
            worker.exited.set()

    def _stop(self, worker: WorkerProcess, timeout: float | None = None) -> None:
        """Out of rotation at once; the worker drains and exits (killed by the health
        check or shutdown if it does not)."""
        if worker.state is WorkerState.STOPPED:
            return
        worker.state = WorkerState.DRAINING
        try:
            stop = Stop(self.config.worker.graceful_timeout if timeout is None else timeout)
            if not worker.channel.send_nowait(stop):
                self.nursery.start_soon(worker.channel.flush)
        except ChannelClosed:
            pass

    # --- replacing workers without dropping a request -------------------------------------

    def _on_retire(self, worker: WorkerProcess, reason: str) -> None:
        """A worker asked to be replaced (request limit) or broke the protocol."""
        slot = self.slots.get(worker.slot)
        if slot is None or slot.current is not worker or worker.state is not WorkerState.READY:
            return
        self.recycle(slot, reason)

    def recycle(self, slot: Slot, reason: str) -> None:
        if self.stopping:
            return
        if slot.replacing:
            slot.recycle_pending = reason  # once the replacement under way is done
            return
        log.info(
            "recycling worker %d (pid %d): %s",
            slot.id,
            slot.current.pid if slot.current else 0,
            reason,
        )
        self.nursery.start_soon(self.replace, slot)

    async def replace(self, slot: Slot) -> bool:
        """Start the slot's new worker, wait until it is ready, then take the old one
        out of rotation and let it drain. If the new one does not become ready, the
        old one keeps serving and False is returned."""
        if slot.replacing or self.stopping:
            return False
        slot.replacing = True
        try:
            old = slot.current
            new = await self._start_worker(slot)
            if new is None:
                return False
            with trio.move_on_after(self.config.ready_timeout + 1):
                async with trio.open_nursery() as race:

                    async def first_of(event: trio.Event) -> None:
                        await event.wait()
                        race.cancel_scope.cancel()

                    race.start_soon(first_of, new.ready)
                    race.start_soon(first_of, new.exited)
            if not new.ready.is_set() or new.exited.is_set() or self.stopping:
                new.kill()
                log.error(
                    "replacement for worker %d failed (%s); worker %d (pid %s) keeps serving",
                    slot.id,
                    new.failure or new.describe_exit(),
                    slot.id,
                    old.pid if old else "-",
                )
                return False
            slot.current = new
            if old is not None and not old.exited.is_set():
                self._stop(old)
                await old.exited.wait()
            return True
        finally:
            slot.replacing = False
            pending, slot.recycle_pending = slot.recycle_pending, None
            if pending and slot.current is not None and not self.stopping:
                self.recycle(slot, pending)

    async def reload(self) -> bool:
        """Rolling reload: replace workers --reload-batch at a time, each new one
        importing the app afresh. Stops at the first replacement that fails, keeping
        the old workers of the remaining slots."""
        if self.reloading or self.stopping:
            log.warning("a reload is already under way; ignoring this one")
            return False
        self.reloading = True
        try:
            ids = sorted(self.slots)
            batch = max(1, self.config.reload_batch)
            log.info("rolling reload of %d workers, %d at a time", len(ids), batch)
            for start in range(0, len(ids), batch):
                results: list[bool] = []
                async with trio.open_nursery() as nursery:
                    for slot_id in ids[start : start + batch]:
                        slot = self.slots.get(slot_id)
                        if slot is not None and not slot.removed:
                            nursery.start_soon(self._replace_into, slot, results)
                if not all(results):
                    log.error("reload aborted: the remaining workers keep their old code")
                    return False
            log.info("reload complete: %d workers replaced", len(ids))
            return True
        finally:
            self.reloading = False

    async def _replace_into(self, slot: Slot, results: list[bool]) -> None:
        results.append(await self.replace(slot))

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
        self._announce_count()

    def scale_down(self) -> None:
        live = sorted(s.id for s in self.slots.values() if not s.removed)
        if len(live) <= 1:
            log.warning("scaling down: already at 1 worker")
            return
        slot = self.slots[live[-1]]
        slot.removed = True
        if slot.current is not None:
            self._stop(slot.current)
        log.info(
            "scaling down: worker %d drains and leaves (%d workers)", slot.id, self.worker_count
        )
        self._announce_count()

    def scale_to(self, count: int) -> None:
        while self.worker_count < count:
            self.scale_up()
        while self.worker_count > max(count, 1):
            self.scale_down()

    # --- messages to and between workers ------------------------------------------------

    def _send_all(self, message: Message, to: list[WorkerProcess] | None = None) -> None:
        for worker in list(self.workers) if to is None else to:
            if worker.state not in (WorkerState.READY, WorkerState.DRAINING):
                continue
            try:
                if not worker.channel.send_nowait(message):
                    self.nursery.start_soon(worker.channel.flush)
            except ChannelClosed:
                pass

    def _on_user_message(self, worker: WorkerProcess, message: UserMessage) -> None:
        """Route a handler's message: log it (to the front), or forward it to one
        worker or all of them (the sender included), like Node's cluster messaging."""
        outgoing = UserMessage(message.payload, message.to, worker.slot)
        if message.to == "front":
            log.info(
                "message from worker %d (pid %d): %r", worker.slot, worker.pid, message.payload
            )
        elif message.to == "all":
            self._send_all(outgoing)
        else:
            slot = self.slots.get(int(message.to))
            if slot is None or slot.current is None:
                log.warning(
                    "message from worker %d to unknown worker %s dropped", worker.slot, message.to
                )
                return
            self._send_all(outgoing, [slot.current])

    def _on_state_request(self, worker: WorkerProcess, request: StateRequest) -> None:
        """rrproxy.state with the memory backend: one operation, atomically, here."""
        try:
            value = self.state_store.apply(request.op, request.key, request.value, request.ttl)
            reply = StateReply(request.request_id, True, value)
        except StoreError as exc:
            reply = StateReply(request.request_id, False, None, str(exc))
        self._send_all(reply, [worker])

    def _announce_count(self) -> None:
        self._send_all(ClusterInfo(self.worker_count))

    def reopen_logs(self) -> None:
        self._send_all(ReopenLogs())

    async def poll(self, timeout: float = 0.5) -> None:
        """Ask every worker for fresh counts and wait (briefly) for the answers."""
        waiting = {w: w.stats_received for w in self.workers if w.state is WorkerState.READY}
        self._send_all(Poll(), list(waiting))
        with trio.move_on_after(timeout):
            while any(
                w.stats_received == seen and not w.exited.is_set() for w, seen in waiting.items()
            ):
                await trio.sleep(0.005)

    # --- health ---------------------------------------------------------------------------

    async def _watch_health(self) -> None:
        """Heartbeats come from each worker's event loop (its Stats), so a handler
        that blocks the loop silences them: after --timeout the worker is killed and
        its slot restarts it. A worker that stops reading its channel is the same.
        A worker above --max-memory is recycled (replacement first, then drain)."""
        timeout = self.config.timeout
        max_memory = self.config.max_memory
        interval = HEALTH_INTERVAL if timeout <= 0 else min(HEALTH_INTERVAL, timeout / 4)
        while True:
            await trio.sleep(interval)
            self.state_store.sweep()
            now = trio.current_time()
            for worker in list(self.workers):
                if worker.state is WorkerState.READY and max_memory:
                    rss = worker.rss_bytes()
                    slot = self.slots.get(worker.slot)
                    if rss is not None and rss > max_memory and slot and slot.current is worker:
                        self.recycle(
                            slot,
                            f"resident memory {rss / 2**20:.0f} MiB above --max-memory "
                            f"{max_memory / 2**20:.0f} MiB",
                        )
                if timeout <= 0 or worker.state not in (WorkerState.READY, WorkerState.DRAINING):
                    continue
                silent = now - worker.last_heard
                full_for = (
                    now - worker.channel_full_since
                    if worker.channel_full_since is not None
                    else 0.0
                )
                if silent > timeout or full_for > timeout:
                    what = (
                        f"sent no heartbeat for {silent:.1f} s"
                        if silent > timeout
                        else f"has not read its channel for {full_for:.1f} s"
                    )
                    log.error(
                        "worker %d (pid %d) is unresponsive: it %s (--timeout %g); killing it",
                        worker.slot,
                        worker.pid,
                        what,
                        timeout,
                    )
                    worker.failure = f"unresponsive: {what}"
                    worker.kill()

    # --- stopping ------------------------------------------------------------------------

    async def shutdown(self, timeout: float) -> None:
        """Graceful stop: every worker drains (finishing in-flight requests) and exits;
        whatever is left after `timeout` is killed. Returns when all have exited."""
        self.stopping = True
        if not self.workers:
            return
        for worker in list(self.workers):
            self._stop(worker, timeout)
        # The workers enforce `timeout` themselves; the margin covers their exit.
        with trio.move_on_after(timeout + 2.0):
            await self._all_exited.wait()
        for worker in list(self.workers):
            log.warning(
                "worker %d (pid %d) did not stop in time; killing it", worker.slot, worker.pid
            )
            worker.kill()
        await self._all_exited.wait()

    def kill_all(self) -> None:
        self.stopping = True
        for worker in list(self.workers):
            worker.kill()
