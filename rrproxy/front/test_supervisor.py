"""The supervisor with fake worker processes (fake_workers.py) on trio's mock clock:
boot, restarts with backoff, the restart-storm rule end to end, scaling, stopping."""

from __future__ import annotations

import itertools
import logging
import signal
import socket

import pytest
import trio
import trio.testing

from ..ipc.messages import ClusterInfo, Configure, NewConn, Stop
from .backoff import BACKOFF_MAX, CRASH_LOOP_AFTER, EARLY_DEATH, RestartStorm
from .fake_workers import (
    GRACEFUL,
    Cluster,
    boot_in,
    die_when_ready,
    drain_for,
    fail_to_start,
    leaves,
    serve,
    settle,
)
from .process import WorkerState
from .spawner import BootError

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


# --- stopping ----------------------------------------------------------------------------


async def test_shutdown_waits_the_graceful_timeout_then_kills(
    autojump_clock: trio.testing.MockClock,
) -> None:
    async with trio.open_nursery() as nursery:
        cluster = Cluster(nursery, workers=2)
        cluster.spawner.scripts[1] = drain_for(3.0)
        cluster.spawner.scripts[2] = drain_for(0.0, obey=False)
        await cluster.boot()
        supervisor = cluster.supervisor
        polite, stuck = cluster.current(1), cluster.current(2)
        start = trio.current_time()
        nursery.start_soon(supervisor.shutdown, 4.0)
        await trio.sleep(1.0)
        # While they drain, nothing replaces them or adds to them.
        supervisor.recycle(cluster.slot(2), "max requests")
        assert not supervisor.start_reload()
        supervisor.scale_up()
        assert supervisor.worker_count == 2
        while supervisor.workers:
            await trio.sleep(0.5)
        # The workers enforce the timeout themselves; the front allows 2 s more.
        assert stuck.exited_at == pytest.approx(start + 4.0 + 2.0)
        assert Stop(4.0) in polite.received and Stop(4.0) in stuck.received
        assert (polite.returncode, polite.signals) == (0, [])
        assert polite.exited_at == pytest.approx(start + 3.0)
        assert (stuck.returncode, stuck.signals) == (-signal.SIGKILL, [signal.SIGKILL])
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
