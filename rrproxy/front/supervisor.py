"""Supervisor: worker slots 1..N, each running one worker process at a time.

It spawns fresh interpreters (never a fork of the running trio front), performs the
Hello/Configure/Ready handshake over each worker's private channel, restarts
workers that exit (with exponential backoff), and stops them gracefully. The front
is the single source of truth for which workers exist and in which state.
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
    PROTOCOL_VERSION,
    Configure,
    Failed,
    Hello,
    Load,
    ProtocolError,
    Ready,
    Rejected,
    Stats,
    Stop,
    Taken,
)
from .dispatcher import Dispatcher
from .workers import WorkerProcess, WorkerState

log = logging.getLogger("rrproxy.front")

BACKOFF_INITIAL = 0.1
BACKOFF_MAX = 10.0
#: A worker that stayed up this long resets its slot's backoff.
BACKOFF_RESET_AFTER = 30.0
#: Time a new worker gets to say Hello and then to report Ready.
HELLO_TIMEOUT = 30.0
READY_TIMEOUT = 120.0
#: A worker that closed its channel gets this long to exit before it is killed.
CHANNEL_EOF_GRACE = 2.0
#: Protocol breaches after which a retiring worker is killed instead of drained.
MAX_BREACHES = 100


class BootError(Exception):
    """A worker could not start during the initial boot: rrproxy exits 2."""


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
        #: Live worker processes, in slot order: what the policy chooses from.
        self.workers: list[WorkerProcess] = []
        self.restarts: dict[int, int] = {}
        self.stopping = False
        self._nursery: trio.Nursery | None = None
        self._boot_pending = config.workers
        self._booted = trio.Event()
        self._boot_error: BootError | None = None
        self._all_exited = trio.Event()

    # --- running -------------------------------------------------------------------

    async def run(self, task_status: trio.TaskStatus[None] = trio.TASK_STATUS_IGNORED) -> None:
        """Start every slot; report started once all are ready. Raises BootError if
        one cannot start. Returns after shutdown() once every worker has exited."""
        async with trio.open_nursery() as nursery:
            self._nursery = nursery
            for slot in range(1, self.config.workers + 1):
                self.restarts[slot] = 0
                nursery.start_soon(self._run_slot, slot)
            nursery.start_soon(self._watch_health)
            await self._booted.wait()
            if self._boot_error is not None:
                raise self._boot_error
            task_status.started()

    async def _run_slot(self, slot: int) -> None:
        delay = BACKOFF_INITIAL
        booting = True
        while not self.stopping:
            started = trio.current_time()
            worker = await self._run_worker(slot)
            if self.stopping:
                return
            if booting and (worker is None or not worker.ever_ready):
                reason = worker.failure if worker and worker.failure else None
                if reason is None:
                    what = worker.describe_exit() if worker else "failed to spawn"
                    reason = f"worker {slot} exited ({what}) before it was ready"
                self._fail_boot(BootError(reason))
                return
            booting = False
            if trio.current_time() - started >= BACKOFF_RESET_AFTER:
                delay = BACKOFF_INITIAL
            self.restarts[slot] += 1
            assert worker is not None
            log.warning(
                "worker %d (pid %d) %s (%s); restart %d in %.1f s",
                slot,
                worker.pid,
                "exited" if worker.ever_ready else "failed to start",
                worker.failure or worker.describe_exit(),
                self.restarts[slot],
                delay,
            )
            await trio.sleep(delay)
            delay = min(delay * 2, BACKOFF_MAX)

    def _fail_boot(self, error: BootError) -> None:
        if self._boot_error is None:
            self._boot_error = error
        self.stopping = True
        self._booted.set()

    def _worker_ready(self, worker: WorkerProcess) -> None:
        worker.state = WorkerState.READY
        worker.last_heard = trio.current_time()
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

    async def _spawn(self, slot: int) -> WorkerProcess:
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
                    str(slot),
                ],
                pass_fds=(worker_end.fileno(),),
                stdin=subprocess.DEVNULL,
            )
        finally:
            # Only the worker may hold its end: when it dies, we see EOF.
            worker_end.close()
        worker = WorkerProcess(
            slot, process, WorkerChannel(front_end), self.config.worker.limit_concurrency
        )
        self.workers.append(worker)
        self.workers.sort(key=lambda w: w.slot)
        return worker

    async def _run_worker(self, slot: int) -> WorkerProcess | None:
        try:
            worker = await self._spawn(slot)
        except OSError as exc:
            log.error("cannot start worker %d: %s", slot, exc)
            return None
        try:
            async with trio.open_nursery() as nursery:
                nursery.start_soon(self._talk, worker)
                await worker.process.wait()
                # The channel reader ends at EOF, after every answer the worker sent
                # has been processed; only then is re-handing safe.
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
        return worker

    async def _talk(self, worker: WorkerProcess) -> None:
        """Read the worker's channel until EOF; any protocol breach kills it."""
        try:
            await self._handshake(worker)
            await self._read(worker)
        except ChannelClosed:
            # Normally the worker exited. One that closed its channel but lives on
            # is broken (nothing can reach it): give it a moment, then kill it.
            with trio.move_on_after(CHANNEL_EOF_GRACE):
                await worker.process.wait()
            if worker.process.returncode is None:
                log.error(
                    "worker %d (pid %d) closed its channel but did not exit; killing it",
                    worker.slot,
                    worker.pid,
                )
                worker.kill()
        except (ProtocolError, _Breach) as exc:
            log.error(
                "worker %d (pid %d) broke the protocol: %s; killing it",
                worker.slot,
                worker.pid,
                exc,
            )
            worker.failure = worker.failure or f"protocol error: {exc}"
            worker.kill()
        except trio.TooSlowError:
            log.error(
                "worker %d (pid %d) did not start in time; killing it", worker.slot, worker.pid
            )
            worker.failure = worker.failure or "did not become ready in time"
            worker.kill()

    async def _handshake(self, worker: WorkerProcess) -> None:
        with trio.fail_after(HELLO_TIMEOUT):
            message, _fd = await worker.channel.receive()
        if not isinstance(message, Hello):
            raise _Breach(f"expected Hello, got {type(message).__name__}")
        if message.version != PROTOCOL_VERSION:
            raise _Breach(f"protocol version {message.version}, front speaks {PROTOCOL_VERSION}")
        shared = self.config.policy == "none"
        await worker.channel.send(
            Configure(worker.slot, self.config.worker.to_dict(), has_listener=shared),
            self.listener.fileno() if shared else None,
        )
        with trio.fail_after(READY_TIMEOUT):
            while True:
                message, _fd = await worker.channel.receive()
                if isinstance(message, Ready):
                    self._worker_ready(worker)
                    return
                if isinstance(message, Failed):
                    worker.failure = message.message
                    if self._booted.is_set():  # at boot, the exit line says it once
                        log.error(
                            "worker %d (pid %d) cannot start: %s",
                            worker.slot,
                            worker.pid,
                            message.message,
                        )
                    continue
                if isinstance(message, Stats):
                    self._stats(worker, message)
                    continue
                raise _Breach(f"unexpected {type(message).__name__} before Ready")

    async def _read(self, worker: WorkerProcess) -> None:
        """Serve the worker's messages. A breach of the protocol retires the worker
        gracefully: it gets no new connections and drains what it holds (its clients
        are not punished for its bug), while its slot starts a replacement once it
        exits. A worker that keeps sending garbage is killed."""
        breaches = 0
        while True:
            try:
                await self._read_one(worker)
            except (ProtocolError, _Breach) as exc:
                breaches += 1
                if breaches == 1:
                    log.error(
                        "worker %d (pid %d) broke the protocol: %s; retiring it",
                        worker.slot,
                        worker.pid,
                        exc,
                    )
                    worker.failure = f"protocol error: {exc}"
                    self._retire(worker)
                elif breaches >= MAX_BREACHES:
                    log.error(
                        "worker %d (pid %d) keeps breaking the protocol; killing it",
                        worker.slot,
                        worker.pid,
                    )
                    worker.kill()
                    return

    def _retire(self, worker: WorkerProcess) -> None:
        """No new connections; drain, then exit (the health check kills it if not)."""
        if worker.state is not WorkerState.READY:
            return
        worker.state = WorkerState.DRAINING
        try:
            if not worker.channel.send_nowait(Stop(self.config.worker.graceful_timeout)):
                assert self._nursery is not None
                self._nursery.start_soon(worker.channel.flush)
        except ChannelClosed:
            pass

    async def _read_one(self, worker: WorkerProcess) -> None:
        dispatcher = self.dispatcher
        channel = worker.channel
        while True:
            message, _fd = await channel.receive()
            kind = type(message)
            worker.last_heard = trio.current_time()
            if kind is Taken:
                if dispatcher is None:
                    raise _Breach("Taken under a policy without handoff")
                worker.connections_active = message.active  # type: ignore[attr-defined]
                dispatcher.taken(worker, message.conn_id)  # type: ignore[attr-defined]
            elif kind is Load:
                worker.connections_active = message.active  # type: ignore[attr-defined]
                if dispatcher is not None:
                    dispatcher.load_changed()
            elif kind is Stats:
                self._stats(worker, message)  # type: ignore[arg-type]
            elif kind is Rejected:
                if dispatcher is None:
                    raise _Breach("Rejected under a policy without handoff")
                dispatcher.rejected(worker, message.conn_id)  # type: ignore[attr-defined]
            else:
                raise _Breach(f"unexpected {kind.__name__}")

    def _stats(self, worker: WorkerProcess, stats: Stats) -> None:
        for name in ("connections_total", "connections_active", "requests_total"):
            if getattr(stats, name) < 0:
                raise _Breach(f"negative {name}")
        worker.connections_total = stats.connections_total
        worker.connections_active = stats.connections_active
        worker.requests_total = stats.requests_total
        worker.last_heard = trio.current_time()

    async def _watch_health(self) -> None:
        """Heartbeats come from each worker's event loop (its Stats), so a handler
        that blocks the loop silences them: after --timeout the worker is killed and
        its slot restarts it. A worker that stops reading its channel is the same."""
        timeout = self.config.timeout
        if timeout <= 0:
            return
        while True:
            await trio.sleep(min(1.0, timeout / 4))
            now = trio.current_time()
            for worker in list(self.workers):
                if worker.state not in (WorkerState.READY, WorkerState.DRAINING):
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
        async with trio.open_nursery() as nursery:
            for worker in list(self.workers):
                self._stop_worker(worker, timeout, nursery)
            # The workers enforce `timeout` themselves; the margin covers their exit.
            with trio.move_on_after(timeout + 2.0):
                await self._all_exited.wait()
            nursery.cancel_scope.cancel()
        for worker in list(self.workers):
            log.warning(
                "worker %d (pid %d) did not stop in time; killing it", worker.slot, worker.pid
            )
            worker.kill()
        await self._all_exited.wait()

    def _stop_worker(self, worker: WorkerProcess, timeout: float, nursery: trio.Nursery) -> None:
        worker.state = WorkerState.DRAINING
        try:
            if not worker.channel.send_nowait(Stop(timeout)):
                nursery.start_soon(worker.channel.flush)
        except ChannelClosed:
            pass

    def kill_all(self) -> None:
        self.stopping = True
        for worker in list(self.workers):
            worker.kill()


class _Breach(Exception):
    """The worker sent something valid but out of place."""
