"""Replacing workers (rolling reload, recycling) through the supervisor, with fake
worker processes (fake_workers.py) on trio's mock clock, and the races: the old
worker dies while its replacement boots, the slot is scaled away meanwhile, a
recycle is asked for during a replacement."""

from __future__ import annotations

import pytest
import trio
import trio.testing

from ..ipc.messages import Stop
from .fake_workers import GRACEFUL, Cluster, FakeWorker, boot_in, drain_for, serve, settle
from .process import WorkerState

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


async def test_a_second_reload_asked_in_the_same_tick_is_refused(
    autojump_clock: trio.testing.MockClock,
) -> None:
    async with trio.open_nursery() as nursery:
        cluster = Cluster(nursery, workers=1)
        await cluster.boot()
        first = cluster.supervisor.start_reload()
        second = cluster.supervisor.start_reload()
        await settle()
        # Whatever the answers, one reload runs: one new worker.
        assert len(cluster.spawner.spawned) == 2
        nursery.cancel_scope.cancel()
        assert (first, second) == (True, False)
