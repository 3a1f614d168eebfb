"""The worker's timeout heap, on trio's autojump clock: waits end at their deadline,
moved deadlines are honoured, and a busy connection costs few heap entries."""

from __future__ import annotations

import math

import trio

from .timeouts import Timeouts
from .trio import BACKEND


class Waiter:
    def __init__(self) -> None:
        self.wait_deadline = math.inf
        self.watched_until = math.inf
        self.expired_at: float | None = None

    def wait_expired(self) -> None:
        self.expired_at = trio.current_time()

    def wait(self, timeouts: Timeouts, seconds: float) -> None:
        self.wait_deadline = trio.current_time() + seconds
        timeouts.watch(self, self.wait_deadline)


async def test_a_wait_ends_at_its_deadline_and_a_finished_one_does_not(
    autojump_clock: trio.testing.MockClock,
) -> None:
    timeouts = Timeouts(BACKEND)
    slow, quick = Waiter(), Waiter()
    async with trio.open_nursery() as nursery:
        nursery.start_soon(timeouts.run)
        start = trio.current_time()
        slow.wait(timeouts, 5)
        quick.wait(timeouts, 5)
        await trio.sleep(1)
        quick.wait_deadline = math.inf  # its data came
        await trio.sleep(10)
        nursery.cancel_scope.cancel()
    assert slow.expired_at == start + 5
    assert quick.expired_at is None


async def test_a_later_deadline_is_rechecked_and_an_earlier_one_wakes_the_task(
    autojump_clock: trio.testing.MockClock,
) -> None:
    timeouts = Timeouts(BACKEND)
    waiter, draining = Waiter(), Waiter()
    async with trio.open_nursery() as nursery:
        nursery.start_soon(timeouts.run)
        start = trio.current_time()
        waiter.wait(timeouts, 2)
        await trio.sleep(1)
        waiter.wait(timeouts, 5)  # moved on: the entry at +2 finds it still waiting
        draining.wait(timeouts, 60)
        await trio.sleep(0.5)
        draining.wait(timeouts, 1)  # shortened (a drain): the task wakes for it
        await trio.sleep(10)
        nursery.cancel_scope.cancel()
    assert waiter.expired_at == start + 6
    assert draining.expired_at == start + 2.5


async def test_many_waits_of_one_connection_cost_one_entry(
    autojump_clock: trio.testing.MockClock,
) -> None:
    timeouts = Timeouts(BACKEND)
    waiter = Waiter()
    for _ in range(1000):  # a request a millisecond on a keep-alive connection
        waiter.wait(timeouts, 5)
        await trio.sleep(0.001)
        waiter.wait_deadline = math.inf
    assert len(timeouts) == 1
