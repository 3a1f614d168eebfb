"""The supervisor with fake worker processes on trio's mock clock: no process is
started and nothing sleeps for real.

The fake spawner hands the supervisor a FakeWorker for each spawn: a process as the
front sees one (pid, returncode, wait(), send_signal()) and the worker's end of a real
SOCK_SEQPACKET channel, which a script drives with the real messages (Hello, Ready,
Taken, ...) as a worker would. The front's side is all real: WorkerLink, the channel,
the slots, the replacer, the restart rule.
"""

from __future__ import annotations

import itertools
import logging
import signal
import socket
from collections.abc import Awaitable, Callable
from typing import Any

import pytest
import trio
import trio.testing

from ..config import Config, WorkerConfig
from ..fds import close_fds
from ..ipc.channel import ChannelClosed, WorkerChannel
from ..ipc.messages import (
    PROTOCOL_VERSION,
    ClusterInfo,
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
from .backoff import BACKOFF_MAX, CRASH_LOOP_AFTER, EARLY_DEATH, RestartStorm
from .dispatcher import Dispatcher
from .policies import RoundRobin
from .process import Slot, WorkerProcess, WorkerState
from .spawner import BootError, ChildProcess, Spawner
from .supervisor import Supervisor

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
    await worker.hello()
    await worker.ready()
    await worker.serve()


async def fail_to_start(worker: FakeWorker) -> None:
    """What a worker whose app does not import does."""
    await worker.hello()
    await worker.channel.send(Failed("import", "ModuleNotFoundError: No module named 'app'"))
    worker.exit(1)


async def die_when_ready(worker: FakeWorker) -> None:
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
        return self.supervisor.slots[slot_id]

    def view(self, fake: FakeWorker) -> WorkerProcess:
        """The front's WorkerProcess for a fake."""
        for slot in self.supervisor.slots.values():
            for worker in slot.processes:
                if worker.process is fake:
                    return worker
        raise LookupError(fake)

    def current(self, slot_id: int) -> FakeWorker:
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


# --- boot --------------------------------------------------------------------------------


async def test_boot_waits_for_every_slot(autojump_clock: trio.testing.MockClock) -> None:
    async with trio.open_nursery() as nursery:
        cluster = Cluster(nursery, workers=3)
        for slot_id in (1, 2, 3):
            cluster.spawner.scripts[slot_id] = boot_in(slot_id * 2.0)
        await cluster.boot()
        # Started when the slowest is ready, not before.
        assert trio.current_time() == pytest.approx(6.0)
        workers = cluster.supervisor.workers
        assert [w.slot_id for w in workers] == [1, 2, 3]
        assert all(w.state is WorkerState.READY for w in workers)
        assert cluster.announced == [
            f"rrproxy: worker {w.slot_id} ready (pid {w.pid})" for w in workers
        ]
        # Configure told each worker its id and the cluster's size.
        for fake in cluster.spawner.spawned:
            configure = fake.received[0]
            assert isinstance(configure, Configure)
            assert (configure.worker_id, configure.worker_count) == (fake.slot_id, 3)
        nursery.cancel_scope.cancel()


async def test_a_worker_that_cannot_start_at_boot_fails_the_boot(
    autojump_clock: trio.testing.MockClock,
) -> None:
    with pytest.raises(BaseExceptionGroup) as info:
        async with trio.open_nursery() as nursery:
            cluster = Cluster(nursery, workers=2)
            cluster.spawner.scripts[2] = fail_to_start
            await cluster.boot()
    [error] = leaves(info.value)
    assert isinstance(error, BootError)
    # The worker's own words, not just "exit code 1".
    assert str(error) == "ModuleNotFoundError: No module named 'app'"
    # Boot fails at once: no retry of a worker that never started.
    assert sorted(w.slot_id for w in cluster.spawner.spawned) == [1, 2]


# --- restarts and the restart-storm rule --------------------------------------------------


async def test_a_dead_worker_is_restarted_after_the_backoff(
    autojump_clock: trio.testing.MockClock,
) -> None:
    async with trio.open_nursery() as nursery:
        cluster = Cluster(nursery, workers=2)
        await cluster.boot()
        # Slot 1's workers die the moment they are ready (slot 2 keeps serving, so
        # the cluster never gives up): each restart waits twice as long, up to 10 s.
        cluster.spawner.scripts[1] = die_when_ready
        fake = cluster.current(1)
        died_at = trio.current_time()
        await cluster.crash(fake)
        delays = []
        for _ in range(9):
            fake = await cluster.spawner.next()
            assert fake.slot_id == 1
            delays.append(fake.spawned_at - died_at)
            await cluster.view(fake).exited.wait()
            assert fake.exited_at is not None
            died_at = fake.exited_at
        assert delays == pytest.approx([0.1, 0.2, 0.4, 0.8, 1.6, 3.2, 6.4, 10.0, 10.0])
        await settle()
        slot = cluster.slot(1)
        assert slot.restarts == 10
        assert slot.last_exit == "exit code 1"
        assert cluster.supervisor.crash_looping(slot)
        assert not cluster.supervisor.crash_looping(cluster.slot(2))
        # While it backs off, it has no process and says when it tries again.
        assert slot.current is None
        assert slot.restart_at == pytest.approx(died_at + BACKOFF_MAX)
        nursery.cancel_scope.cancel()


async def test_a_worker_that_stays_up_resets_the_backoff(
    autojump_clock: trio.testing.MockClock,
) -> None:
    async with trio.open_nursery() as nursery:
        cluster = Cluster(nursery, workers=1)
        await cluster.boot()
        # Three quick deaths after serving clients (they do not count): backoff 0.4 s.
        for expected in (0.1, 0.2, 0.4):
            fake = cluster.current(1)
            cluster.view(fake).had_clients = True
            await cluster.crash(fake)
            died_at = trio.current_time()
            fake = await cluster.spawner.next()
            assert fake.spawned_at - died_at == pytest.approx(expected)
            await cluster.ready(fake)
        # Up 29 s: the backoff keeps growing. Up 30 s: it starts over.
        await trio.sleep(29.0)
        await cluster.crash(fake)
        died_at = trio.current_time()
        fake = await cluster.spawner.next()
        assert fake.spawned_at - died_at == pytest.approx(0.8)
        await cluster.ready(fake)
        await trio.sleep(30.0)
        await cluster.crash(fake)
        died_at = trio.current_time()
        fake = await cluster.spawner.next()
        assert fake.spawned_at - died_at == pytest.approx(0.1)
        assert cluster.slot(1).crashes == 0
        nursery.cancel_scope.cancel()


async def test_deaths_after_clients_never_stop_the_server(
    autojump_clock: trio.testing.MockClock,
) -> None:
    """A request that kills its worker, over and over, on the only slot: every one of
    those workers was reached by a client (a real handoff, answered Taken), so none
    counts, and rrproxy keeps restarting instead of exiting."""
    async with trio.open_nursery() as nursery:
        cluster = Cluster(nursery, workers=1, handoff=True)
        await cluster.boot()
        assert cluster.dispatcher is not None
        for _ in range(CRASH_LOOP_AFTER * 3):
            fake = cluster.current(1)
            client, server = socket.socketpair()
            with client:
                cluster.dispatcher.submit(server.detach())
                await settle()
            assert any(isinstance(m, NewConn) for m in fake.received)
            worker = cluster.view(fake)
            assert worker.had_clients and not worker.unacked  # Taken reached the front
            await cluster.crash(fake, -signal.SIGSEGV)
            await cluster.ready(await cluster.spawner.next())
        slot = cluster.slot(1)
        assert (slot.restarts, slot.crashes) == (CRASH_LOOP_AFTER * 3, 0)
        assert slot.last_exit == "signal SIGSEGV"
        assert not cluster.supervisor.crash_looping(slot)
        assert cluster.dispatcher.held == 0
        nursery.cancel_scope.cancel()


async def test_one_crash_looping_slot_keeps_retrying_while_the_others_serve(
    autojump_clock: trio.testing.MockClock, caplog: pytest.LogCaptureFixture
) -> None:
    caplog.set_level(logging.WARNING, "rrproxy.front")
    async with trio.open_nursery() as nursery:
        cluster = Cluster(nursery, workers=2)
        await cluster.boot()
        cluster.spawner.scripts[2] = fail_to_start
        await cluster.crash(cluster.current(2))
        # Two virtual minutes of slot 2 failing to start: never more than 10 s apart.
        await trio.sleep(120.0)
        attempts = [w.spawned_at for w in cluster.spawner.spawned if w.slot_id == 2][1:]
        assert len(attempts) > 15
        assert max(b - a for a, b in itertools.pairwise(attempts)) <= BACKOFF_MAX + 1e-9
        slot = cluster.slot(2)
        assert cluster.supervisor.crash_looping(slot)
        assert slot.last_exit == "ModuleNotFoundError: No module named 'app'"
        said = [r.getMessage() for r in caplog.records if "cannot stay up" in r.getMessage()]
        assert len(said) == 1 and said[0].startswith("worker 2 cannot stay up (5 deaths")
        # Slot 1 served all along.
        assert cluster.slot(1).current is cluster.supervisor.workers[0]
        assert cluster.supervisor.workers[0].state is WorkerState.READY
        assert cluster.slot(1).restarts == 0

        # The app is fixed: the next worker starts, and once it has been up EARLY_DEATH
        # the slot is no longer crash-looping.
        cluster.spawner.scripts[2] = serve
        fake = await cluster.spawner.next()
        while fake.spawned_at < trio.current_time():  # an attempt made before the fix
            fake = await cluster.spawner.next()
        worker = await cluster.ready(fake)
        assert cluster.supervisor.crash_looping(slot)
        assert worker.ready_at is not None
        await trio.sleep_until(worker.ready_at + EARLY_DEATH)
        assert not cluster.supervisor.crash_looping(slot)
        nursery.cancel_scope.cancel()


async def test_rrproxy_gives_up_only_when_every_slot_is_crash_looping(
    autojump_clock: trio.testing.MockClock,
) -> None:
    with pytest.raises(BaseExceptionGroup) as info:
        async with trio.open_nursery() as nursery:
            cluster = Cluster(nursery, workers=2)
            await cluster.boot()
            cluster.spawner.script = fail_to_start
            # Slot 1 loops first; slot 2 still serves, so nothing gives up.
            started = trio.current_time()
            await cluster.crash(cluster.current(1))
            await trio.sleep(20.0)
            assert cluster.supervisor.crash_looping(cluster.slot(1))
            assert not cluster.supervisor.crash_looping(cluster.slot(2))
            # Then slot 2 breaks too: its fifth death in a row is the end.
            broke = trio.current_time()
            await cluster.crash(cluster.current(2))
            await trio.sleep(60.0)
    [storm] = leaves(info.value)
    assert isinstance(storm, RestartStorm)
    assert "each of the 2 slots, 5 times in a row" in str(storm)
    # Slot 2's worker had been up 20 s when it died: that death proves nothing wrong
    # and does not count. Its next five fail, after 0.1, 0.2, 0.4, 0.8 and 1.6 s.
    assert trio.current_time() == pytest.approx(broke + 3.1)
    assert cluster.slot(2).crashes == CRASH_LOOP_AFTER
    assert cluster.slot(2).restarts == CRASH_LOOP_AFTER + 1
    # Slot 1's did count: it had just started (ready at 0, dead at 0).
    assert started == 0.0


# --- scaling -----------------------------------------------------------------------------


async def test_scale_up_and_down(autojump_clock: trio.testing.MockClock) -> None:
    async with trio.open_nursery() as nursery:
        cluster = Cluster(nursery, workers=2)
        await cluster.boot()
        supervisor = cluster.supervisor
        supervisor.scale_up()
        three = await cluster.spawner.next()
        assert three.slot_id == 3
        await cluster.ready(three)
        assert supervisor.worker_count == 3
        assert [w.slot_id for w in supervisor.workers] == [1, 2, 3]
        # The workers that were there are told the new count.
        assert ClusterInfo(3) in cluster.current(1).received

        # Down: the highest slot drains (Stop with the graceful timeout) and leaves.
        supervisor.scale_down()
        assert supervisor.worker_count == 2
        await cluster.view(three).exited.wait()
        await settle()
        assert Stop(GRACEFUL) in three.received
        assert three.returncode == 0
        assert sorted(supervisor.slots) == [1, 2]
        assert ClusterInfo(2) in cluster.current(1).received

        # The freed id is reused.
        supervisor.scale_to(4)
        assert [s.id for s in supervisor.slots.values()] == [1, 2, 3, 4]
        await settle()
        assert supervisor.worker_count == 4
        supervisor.scale_to(0)  # never below one
        assert supervisor.worker_count == 1
        supervisor.scale_down()
        assert supervisor.worker_count == 1
        await trio.sleep(1.0)
        assert sorted(supervisor.slots) == [1]
        assert len(supervisor.workers) == 1
        assert len(cluster.spawner.spawned) == 5  # no leaving slot was restarted
        nursery.cancel_scope.cancel()


async def test_scale_down_removes_a_crash_looping_slot_first(
    autojump_clock: trio.testing.MockClock,
) -> None:
    async with trio.open_nursery() as nursery:
        cluster = Cluster(nursery, workers=3)
        await cluster.boot()
        cluster.spawner.scripts[1] = fail_to_start
        await cluster.crash(cluster.current(1))
        await trio.sleep(10.0)
        assert cluster.supervisor.crash_looping(cluster.slot(1))
        cluster.supervisor.scale_down()
        await trio.sleep(BACKOFF_MAX)  # its backoff ends, and with it the slot
        assert sorted(cluster.supervisor.slots) == [2, 3]
        nursery.cancel_scope.cancel()


async def test_a_spawn_that_fails_is_retried_after_the_backoff(
    autojump_clock: trio.testing.MockClock,
) -> None:
    async with trio.open_nursery() as nursery:
        cluster = Cluster(nursery, workers=1)
        await cluster.boot()
        cluster.spawner.failing = True
        await cluster.crash(cluster.current(1))
        await trio.sleep(1.0)  # 0.1 + 0.2 + 0.4: three failed spawns, then 0.8 s
        cluster.spawner.failing = False
        fake = await cluster.spawner.next()
        assert fake.spawned_at == pytest.approx(1.5 + cluster.spawner.spawned[0].spawned_at)
        # Failing to spawn says nothing about the app: only the worker's death counts.
        assert (cluster.slot(1).crashes, cluster.slot(1).restarts) == (1, 1)
        nursery.cancel_scope.cancel()


# --- replacing: reload and recycling, and their races --------------------------------------


async def test_rolling_reload_replaces_one_slot_at_a_time(
    autojump_clock: trio.testing.MockClock,
) -> None:
    async with trio.open_nursery() as nursery:
        cluster = Cluster(nursery, workers=2, script=drain_for(1.0))
        await cluster.boot()
        old = [cluster.current(1), cluster.current(2)]
        cluster.spawner.script = boot_in(2.0)
        start = trio.current_time()
        assert cluster.supervisor.start_reload()
        await settle()
        assert not cluster.supervisor.start_reload()  # one at a time
        new1 = await cluster.spawner.next()
        await cluster.ready(new1)
        # The new worker is ready before the old one is told to stop.
        assert cluster.current(1) is new1
        assert old[0].received[-1] == Stop(GRACEFUL)
        new2 = await cluster.spawner.next()
        # The next slot starts once the old worker of the first has drained.
        assert new2.spawned_at == pytest.approx(start + 2.0 + 1.0)
        assert old[0].exited_at == pytest.approx(new2.spawned_at)
        await cluster.ready(new2)
        while cluster.supervisor.reloading:
            await trio.sleep(0.5)
        assert [cluster.current(1), cluster.current(2)] == [new1, new2]
        assert all(fake.returncode == 0 for fake in old)
        assert cluster.slot(1).restarts == 0  # a replaced worker is not a death
        nursery.cancel_scope.cancel()


async def test_the_old_worker_dies_while_its_replacement_boots(
    autojump_clock: trio.testing.MockClock,
) -> None:
    async with trio.open_nursery() as nursery:
        cluster = Cluster(nursery, workers=1)
        await cluster.boot()
        old = cluster.current(1)
        cluster.spawner.script = boot_in(3.0)
        cluster.supervisor.recycle(cluster.slot(1), "test")
        new = await cluster.spawner.next()
        await trio.sleep(1.0)
        await cluster.crash(old)
        # The slot does not start a third worker after its backoff: the replacement
        # under way fills it.
        await trio.sleep(10.0)
        assert cluster.spawner.spawned == [old, new]
        assert cluster.current(1) is new
        assert cluster.view(new).state is WorkerState.READY
        assert cluster.slot(1).processes == [cluster.view(new)]
        assert cluster.slot(1).restarts == 1
        nursery.cancel_scope.cancel()


async def test_the_old_worker_dies_and_its_replacement_fails(
    autojump_clock: trio.testing.MockClock,
) -> None:
    async with trio.open_nursery() as nursery:
        cluster = Cluster(nursery, workers=1)
        await cluster.boot()
        old = cluster.current(1)

        async def fail_later(worker: FakeWorker) -> None:
            await worker.hello()
            await trio.sleep(3.0)
            worker.exit(1)

        cluster.spawner.script = fail_later
        cluster.supervisor.recycle(cluster.slot(1), "test")
        await cluster.spawner.next()
        await cluster.crash(old)
        # Once the replacement has failed, the slot restarts on its own (its backoff
        # ran out while the replacement was booting).
        cluster.spawner.script = serve
        third = await cluster.spawner.next()
        assert third.spawned_at == pytest.approx(old.spawned_at + 3.0)
        await cluster.ready(third)
        assert cluster.current(1) is third
        nursery.cancel_scope.cancel()


async def test_recycling_a_slot_that_is_being_scaled_away(
    autojump_clock: trio.testing.MockClock,
) -> None:
    async with trio.open_nursery() as nursery:
        cluster = Cluster(nursery, workers=2, script=drain_for(1.0))
        await cluster.boot()
        supervisor = cluster.supervisor
        old = cluster.current(2)
        # A replacement is booting when the slot is scaled away: it must not become a
        # second worker in rotation, nor a stray; both processes go.
        cluster.spawner.script = boot_in(3.0)
        supervisor.recycle(cluster.slot(2), "max requests")
        new = await cluster.spawner.next()
        await trio.sleep(1.0)
        supervisor.scale_down()
        await settle()
        assert Stop(GRACEFUL) in old.received
        # Asked again while it is stopping: nothing starts.
        supervisor.recycle(cluster.slot(2), "max requests")
        await trio.sleep(10.0)
        assert new.received[-1] == Stop(GRACEFUL)
        assert (old.returncode, new.returncode) == (0, 0)
        assert cluster.spawner.spawned[2:] == [new]
        assert sorted(supervisor.slots) == [1]
        assert [w.slot_id for w in supervisor.workers] == [1]
        nursery.cancel_scope.cancel()


async def test_a_recycle_asked_during_a_replacement_follows_it(
    autojump_clock: trio.testing.MockClock,
) -> None:
    async with trio.open_nursery() as nursery:
        cluster = Cluster(nursery, workers=1)
        await cluster.boot()
        cluster.spawner.script = boot_in(2.0)
        slot = cluster.slot(1)
        cluster.supervisor.recycle(slot, "memory")
        second = await cluster.spawner.next()
        cluster.supervisor.recycle(slot, "memory")  # pending, not a second at once
        await settle()
        assert len(cluster.spawner.spawned) == 2
        third = await cluster.spawner.next()
        assert third.spawned_at == pytest.approx(second.spawned_at + 2.0)
        await cluster.ready(third)
        await settle()
        assert cluster.current(1) is third
        assert second.returncode == 0
        nursery.cancel_scope.cancel()


# --- stopping ----------------------------------------------------------------------------


async def test_shutdown_waits_the_graceful_timeout_then_kills(
    autojump_clock: trio.testing.MockClock,
) -> None:
    async with trio.open_nursery() as nursery:
        cluster = Cluster(nursery, workers=2)
        cluster.spawner.scripts[1] = drain_for(3.0)
        cluster.spawner.scripts[2] = drain_for(0.0, obey=False)
        await cluster.boot()
        polite, stuck = cluster.current(1), cluster.current(2)
        start = trio.current_time()
        await cluster.supervisor.shutdown(4.0)
        # The workers enforce the timeout themselves; the front allows 2 s more.
        assert trio.current_time() == pytest.approx(start + 4.0 + 2.0)
        assert Stop(4.0) in polite.received and Stop(4.0) in stuck.received
        assert (polite.returncode, polite.signals) == (0, [])
        assert polite.exited_at == pytest.approx(start + 3.0)
        assert (stuck.returncode, stuck.signals) == (-signal.SIGKILL, [signal.SIGKILL])
        assert cluster.supervisor.workers == []
        # Nothing restarts what was stopped.
        await trio.sleep(30.0)
        assert len(cluster.spawner.spawned) == 2
        nursery.cancel_scope.cancel()


async def test_stop_during_boot(autojump_clock: trio.testing.MockClock) -> None:
    async with trio.open_nursery() as nursery:
        cluster = Cluster(nursery, workers=2, script=boot_in(10.0))
        nursery.start_soon(cluster.supervisor.run)
        await trio.sleep(1.0)
        start = trio.current_time()
        # Still importing the app: they read Stop only once ready (at 10 s), after the
        # 4 + 2 s the front waits, so they are killed.
        await cluster.supervisor.shutdown(4.0)
        assert trio.current_time() == pytest.approx(start + 6.0)
        assert all(f.returncode == -signal.SIGKILL for f in cluster.spawner.spawned)
        await trio.sleep(30.0)
        assert len(cluster.spawner.spawned) == 2
        assert cluster.announced == []  # none was ever ready
        nursery.cancel_scope.cancel()


async def test_stop_while_a_worker_is_being_spawned(
    autojump_clock: trio.testing.MockClock,
) -> None:
    async with trio.open_nursery() as nursery:
        cluster = Cluster(nursery, workers=1)
        await cluster.boot()
        cluster.spawner.delay = 1.0
        await cluster.crash(cluster.current(1))
        await trio.sleep(0.5)  # the restart is being spawned (0.1 s backoff, 1 s exec)
        assert cluster.supervisor.workers == []
        await cluster.supervisor.shutdown(GRACEFUL)
        # The new process's first message is Stop, so it exits at once instead of
        # booting and serving after rrproxy stopped.
        late = await cluster.spawner.next()
        await settle()
        assert late.received == [Stop(GRACEFUL)]
        assert late.returncode == 0
        assert cluster.supervisor.workers == []
        nursery.cancel_scope.cancel()
