"""Connection timeouts for a whole worker: one task and one heap, not a deadline per
wait.

Every keep-alive wait, head and body read has a deadline. Giving each wait its own
cancel-scope deadline costs the loop's timer machinery twice per request (measured
on trio: about 10% of throughput, and a longer tail). Instead a connection just
writes `wait_deadline` before it waits and sets it back to infinity after; `watch`
puts it on a heap only when no earlier check of it is pending (lazily, as nginx's
and libuv's timers do), so a keep-alive connection costs about one heap entry per
keep-alive period. One task sleeps until the earliest entry, and ends the
connections whose wait has passed its deadline.
"""

from __future__ import annotations

import heapq
import itertools
import math
from typing import TYPE_CHECKING, Protocol

if TYPE_CHECKING:
    from .backend import Backend, CancelScope


class Waiter(Protocol):
    """What Timeouts watches: a connection, which keeps the two deadlines below."""

    #: When the current wait must end (inf: not waiting).
    wait_deadline: float
    #: The deadline of this waiter's entry on the heap (inf: none pending).
    watched_until: float

    def wait_expired(self) -> None:
        """Called by the timeout task when `wait_deadline` has passed: end the wait
        (the connection cancels its scope)."""


class Timeouts:
    """The deadlines of every waiting connection of a worker, on one heap that one
    task (`run`) serves (see the module docstring)."""

    def __init__(self, backend: Backend) -> None:
        self._backend = backend
        self._heap: list[tuple[float, int, Waiter]] = []
        self._order = itertools.count()
        self._sleep: CancelScope | None = None
        self._sleeping_until = math.inf

    def watch(self, waiter: Waiter, deadline: float) -> None:
        """`waiter` waits until `deadline` (it has set its wait_deadline)."""
        if waiter.watched_until <= deadline:
            return  # an earlier check is pending; it re-checks when it comes
        waiter.watched_until = deadline
        heapq.heappush(self._heap, (deadline, next(self._order), waiter))
        if deadline < self._sleeping_until and self._sleep is not None:
            self._sleep.cancel()  # wake up earlier than planned

    def __len__(self) -> int:
        return len(self._heap)

    def expire(self, now: float) -> None:
        """End every wait whose deadline has passed; re-watch later deadlines."""
        heap = self._heap
        while heap and heap[0][0] <= now:
            deadline, _, waiter = heapq.heappop(heap)
            if waiter.watched_until != deadline:
                continue  # superseded by an earlier entry
            waiter.watched_until = math.inf
            if waiter.wait_deadline <= now:
                waiter.wait_expired()
            elif waiter.wait_deadline != math.inf:
                self.watch(waiter, waiter.wait_deadline)

    async def run(self) -> None:
        """The worker's timeout task."""
        backend = self._backend
        while True:
            self.expire(backend.current_time())
            until = self._heap[0][0] if self._heap else math.inf
            with backend.cancel_scope() as scope:
                self._sleep = scope
                self._sleeping_until = until
                if until == math.inf:
                    await backend.event().wait()  # until a watch() wakes us
                else:
                    await backend.sleep_until(until)
            self._sleep = None
            self._sleeping_until = math.inf
