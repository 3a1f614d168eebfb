"""Test support: the supervisor over fake worker processes, for trio's mock clock.

The fake spawner hands the supervisor a FakeWorker for each spawn: a process as the
front sees one (pid, returncode, wait(), send_signal()) and the worker's end of a real
SOCK_SEQPACKET channel, which a script drives with the real messages (Hello, Ready,
Taken, ...) as a worker would. The front's side is all real: WorkerLink, the channel,
the slots, the replacer, the restart rule. Used by test_supervisor.py and
test_replace.py; no process is started and nothing sleeps for real.
"""

from __future__ import annotations

import itertools
import signal
import socket
from collections.abc import Awaitable, Callable
from typing import Any

import trio
import trio.testing

from ..config import Config, WorkerConfig
from ..fds import close_fds
from ..ipc.channel import ChannelClosed, WorkerChannel
from ..ipc.messages import (
    PROTOCOL_VERSION,
    Configure,
    Failed,
    Hello,
    Message,
    NewConn,
    NewConns,
    Ready,
    Stop,
    Taken,
)
from .dispatcher import Dispatcher
from .policies import RoundRobin
from .process import Slot, WorkerProcess
from .spawner import ChildProcess, Spawner
from .supervisor import Supervisor

#: The workers' --graceful-timeout in these tests.
GRACEFUL = 5.0

Script = Callable[["FakeWorker"], Awaitable[None]]


class Gone(Exception):
    """The fake worker has exited; its script ends."""


class FakeWorker:
    """A worker process that is not one. The front sees a process; the test drives
    the worker's end of its real channel."""

    def __init__(self, slot_id: int, pid: int, end: socket.socket) -> None:
        self.slot_id = slot_id
        self.pid = pid
        self.returncode: int | None = None
        self.channel = WorkerChannel(end)
        self.spawned_at = trio.current_time()
        self.exited_at: float | None = None
        self.signals: list[int] = []
        #: Every message the front sent it, in order.
        self.received: list[Message] = []
        self.scope = trio.CancelScope()
        self._exited = trio.Event()

    # --- the process, as the front sees it -------------------------------------------

    async def wait(self) -> int:
        """Until it has exited."""
        await self._exited.wait()
        assert self.returncode is not None
        return self.returncode

    def send_signal(self, sig: int, /) -> None:
        """Recorded; SIGKILL ends it (the front sends no other)."""
        self.signals.append(sig)
        if sig == signal.SIGKILL:
            self.exit(-signal.SIGKILL)

    # --- the worker, as the test drives it ----------------------------------------------

    def exit(self, code: int) -> None:
        """The process ends: its channel end closes (the front reads EOF), its script
        stops and wait() returns."""
        if self.returncode is not None:
            return
        self.returncode = code
        self.exited_at = trio.current_time()
        self.scope.cancel()
        self.channel.close()
        self._exited.set()

    async def receive(self) -> Message:
        """The front's next message (handed connections are closed: nobody serves them)."""
        message, fds = await self.channel.receive()
        close_fds(fds)
        self.received.append(message)
        return message

    async def hello(self) -> None:
        """The handshake up to Configure. A Stop first (the front began stopping while
        it was spawned) makes it exit at once, as worker/main.py does."""
        await self.channel.send(Hello(PROTOCOL_VERSION, self.pid))
        message = await self.receive()
        if isinstance(message, Stop):
            self.exit(0)
            raise Gone
        assert isinstance(message, Configure)
        assert message.worker_id == self.slot_id

    async def ready(self) -> None:
        """The app is loaded."""
        await self.channel.send(Ready())

    async def serve(self, drain: float = 0.0, obey: bool = True) -> None:
        """Answer handoffs with Taken until Stop; then drain `drain` seconds and exit 0.
        With `obey` False, it ignores Stop (a hung worker)."""
        while True:
            match await self.receive():
                case NewConn(conn_id=conn_id):
                    await self.channel.send(Taken(conn_id, 1))
                case NewConns(conn_ids=conn_ids):
                    for conn_id in conn_ids:
                        await self.channel.send(Taken(conn_id, len(conn_ids)))
                case Stop() if obey:
                    break
        await trio.sleep(drain)
        self.exit(0)

    def __repr__(self) -> str:
        return f"<fake worker {self.slot_id} pid {self.pid} spawned at {self.spawned_at:g}>"


# --- scripts: what a fake worker does once spawned ---------------------------------------


async def serve(worker: FakeWorker) -> None:
    """A healthy worker: ready at once, serves until Stop, then exits 0."""
    await worker.hello()
    await worker.ready()
    await worker.serve()


async def fail_to_start(worker: FakeWorker) -> None:
    """What a worker whose app does not import does."""
    await worker.hello()
    await worker.channel.send(Failed("import", "ModuleNotFoundError: No module named 'app'"))
    worker.exit(1)


async def die_when_ready(worker: FakeWorker) -> None:
    """A worker that crashes right after it said Ready (before any client)."""
    await worker.hello()
    await worker.ready()
    worker.exit(1)


def boot_in(seconds: float) -> Script:
    """Ready `seconds` after Configure (a slow app import), then serve."""

    async def script(worker: FakeWorker) -> None:
        await worker.hello()
        await trio.sleep(seconds)
        await worker.ready()
        await worker.serve()

    return script


def drain_for(seconds: float, obey: bool = True) -> Script:
    """Serve; on Stop, take `seconds` to finish (or never, if not `obey`)."""

    async def script(worker: FakeWorker) -> None:
        await worker.hello()
        await worker.ready()
        await worker.serve(drain=seconds, obey=obey)

    return script


class FakeSpawner(Spawner):
    """Spawns FakeWorkers, each running its script in the test's nursery."""

    def __init__(self, config: Config, outside: trio.Nursery, script: Script) -> None:
        super().__init__(config)
        self.outside = outside
        #: What new workers do, per slot id (else `script`); tests change it as they go.
        self.scripts: dict[int, Script] = {}
        self.script = script
        #: Seconds each spawn takes (an exec is not instant).
        self.delay = 0.0
        #: Spawns raise OSError (fork or exec failing) while this is set.
        self.failing = False
        self.spawned: list[FakeWorker] = []
        #: How many of `spawned` next() has returned (or the test has seen otherwise).
        self.seen = 0
        self._pids = itertools.count(5_000_001)  # above any pid_max: /proc has none
        self._spawn = trio.Event()

    async def spawn(self, slot_id: int, worker_end: socket.socket) -> ChildProcess:
        """A FakeWorker holding a copy of `worker_end`, its script started."""
        if self.delay:
            await trio.sleep(self.delay)
        if self.failing:
            raise OSError(11, "Resource temporarily unavailable")
        # The supervisor closes worker_end once we return, as for a real child.
        worker = FakeWorker(slot_id, next(self._pids), worker_end.dup())
        self.spawned.append(worker)
        self._spawn.set()
        self._spawn = trio.Event()
        self.outside.start_soon(self._live, worker, self.scripts.get(slot_id, self.script))
        return worker

    async def next(self) -> FakeWorker:
        """The next worker spawned that the test has not seen (in order)."""
        while len(self.spawned) <= self.seen:
            await self._spawn.wait()
        self.seen += 1
        return self.spawned[self.seen - 1]

    @staticmethod
    async def _live(worker: FakeWorker, script: Script) -> None:
        with worker.scope:
            try:
                await script(worker)
            except (Gone, ChannelClosed):
                pass


class Cluster:
    """A Supervisor over fake workers, and what the test needs to reach them."""

    def __init__(
        self,
        nursery: trio.Nursery,
        workers: int = 1,
        script: Script = serve,
        handoff: bool = False,
        **front: Any,
    ) -> None:
        self.nursery = nursery
        self.config = Config(
            WorkerConfig(app="app:app", graceful_timeout=GRACEFUL),
            workers=workers,
            timeout=0,  # no heartbeats from fakes
            **front,
        )
        self.spawner = FakeSpawner(self.config, nursery, script)
        self.announced: list[str] = []
        self.dispatcher = (
            Dispatcher(RoundRobin(), lambda: self.supervisor.workers, 100) if handoff else None
        )
        self.supervisor = Supervisor(
            self.config, [], self.dispatcher, self.announced.append, spawner=self.spawner
        )

    async def boot(self) -> None:
        """Run the supervisor; returns once it reports started (every slot ready)."""
        await self.nursery.start(self.supervisor.run)
        self.spawner.seen = len(self.spawner.spawned)

    def slot(self, slot_id: int) -> Slot:
        """The supervisor's slot with that id."""
        return self.supervisor.slots[slot_id]

    def view(self, fake: FakeWorker) -> WorkerProcess:
        """The front's WorkerProcess for a fake."""
        for slot in self.supervisor.slots.values():
            for worker in slot.processes:
                if worker.process is fake:
                    return worker
        raise LookupError(fake)

    def current(self, slot_id: int) -> FakeWorker:
        """The slot's current worker, as the fake it is."""
        current = self.slot(slot_id).current
        assert current is not None
        assert isinstance(current.process, FakeWorker)
        return current.process

    async def ready(self, fake: FakeWorker) -> WorkerProcess:
        """Once the front has taken the fake's Ready, and acted on it."""
        await settle()
        worker = self.view(fake)
        await worker.ready.wait()
        await settle()
        return worker

    async def crash(self, fake: FakeWorker, code: int = 1) -> None:
        """The fake dies; returns once the front has seen it go."""
        worker = self.view(fake)
        fake.exit(code)
        await worker.exited.wait()
        await settle()


async def settle() -> None:
    """Let the front react to what just happened, without the clock moving."""
    await trio.testing.wait_all_tasks_blocked()


def leaves(exc: BaseException) -> list[BaseException]:
    """The exceptions inside (nested) exception groups."""
    if isinstance(exc, BaseExceptionGroup):
        return [leaf for sub in exc.exceptions for leaf in leaves(sub)]
    return [exc]
