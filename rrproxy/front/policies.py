"""Scheduling policies for the front: which worker gets the next connection.

Pure selection logic over candidates that say whether they are `accepting` (ready,
channel open and not full, under the hard limit of unanswered handoffs), whether
they have `room` (accepting and under the soft limits), their `load` (open plus
handed-over connections, as the workers report them) and their stable `slot` id.
No sockets: unit-tested as is. (`none` and `reuseport` have no front-side policy:
the kernel decides.)
"""

from __future__ import annotations

import bisect
import hashlib
from collections.abc import Sequence
from typing import Protocol, TypeVar


class Candidate(Protocol):
    """What a policy sees of a worker (the front's WorkerProcess, or a test's fake)."""

    @property
    def slot(self) -> int:
        """The worker's slot id: stable across its restarts and reloads."""
        ...

    @property
    def accepting(self) -> bool:
        """It may be given connections at all (ready, not draining, not stalled)."""
        ...

    @property
    def has_room(self) -> bool:
        """Accepting, and below its limits (channel, unanswered handoffs,
        --limit-concurrency): the first choice of every policy."""
        ...

    @property
    def load(self) -> int:
        """Open connections: what the worker reports plus those handed and not yet
        answered (least-conn's measure)."""
        ...


C = TypeVar("C", bound=Candidate)


class Policy(Protocol):
    """A scheduling policy: picks the worker for each connection. Built in: RoundRobin, LeastConn,
    IpHash; --policy module:Class loads one of the user's."""

    name: str

    def choose(
        self, candidates: Sequence[C], require_room: bool = False, client: str | None = None
    ) -> C | None:
        """A candidate with room; failing that (unless `require_room`) one that is
        at least accepting; None if there is none. `client` is the peer address."""
        ...


class _Rotation:
    """The scan RoundRobin and LeastConn share: from where the last choice left off,
    the first candidate with room (or, `by_load`, the least loaded of those; ties go
    to the first in rotation), else the same among those merely accepting."""

    def __init__(self) -> None:
        self._next = 0

    def _pick(self, candidates: Sequence[C], require_room: bool, by_load: bool) -> C | None:
        count = len(candidates)
        if not count:
            return None
        start = self._next % count
        best = fallback = -1
        best_load = fallback_load = 0
        for step in range(count):
            index = (start + step) % count
            candidate = candidates[index]
            if candidate.has_room:
                if not by_load:
                    best = index
                    break
                load = candidate.load
                if best < 0 or load < best_load:
                    best, best_load = index, load
            elif candidate.accepting and not require_room:
                load = candidate.load if by_load else 0
                if fallback < 0 or load < fallback_load:
                    fallback, fallback_load = index, load
        chosen = best if best >= 0 else fallback
        if chosen < 0:
            return None
        self._next = chosen + 1
        return candidates[chosen]


class RoundRobin(_Rotation):
    """Node's SCHED_RR: the next worker in rotation. A worker without room (a
    blocked loop stops answering handoffs, or it is at --limit-concurrency) is
    passed over while another has room; when none has room, the next one still
    accepting takes it, so a flood of idle connections can delay dispatch but
    never stop it."""

    name = "rr"

    def choose(
        self, candidates: Sequence[C], require_room: bool = False, client: str | None = None
    ) -> C | None:
        """The next candidate in rotation with room, else the next accepting one."""
        return self._pick(candidates, require_room, by_load=False)


class LeastConn(_Rotation):
    """The worker with the fewest open connections (as the workers report them, plus
    the ones handed over and not yet answered). Ties go round-robin, so equal
    workers still share evenly. Balancing "by busyness", as PM2 users ask."""

    name = "least-conn"

    def choose(
        self, candidates: Sequence[C], require_room: bool = False, client: str | None = None
    ) -> C | None:
        """The least loaded candidate with room, else the least loaded accepting one."""
        return self._pick(candidates, require_room, by_load=True)


def _hash(text: str) -> int:
    return int.from_bytes(hashlib.blake2b(text.encode(), digest_size=8).digest(), "big")


class IpHash:
    """Sticky sessions: a client address always goes to the same live worker.

    Consistent hashing on a ring of VNODES points per worker slot (slot ids are
    stable across restarts and reloads): when a worker leaves, only the clients it
    had move (to the next worker on the ring), and they come back when it returns.
    Stickiness beats load here, so only `accepting` counts, not `has_room`."""

    name = "ip-hash"
    VNODES = 160

    def __init__(self) -> None:
        self._slots: tuple[int, ...] = ()
        self._points: list[int] = []
        self._owners: list[int] = []
        self._fallback = RoundRobin()

    def _ring(self, slots: tuple[int, ...]) -> None:
        if slots == self._slots:
            return
        pairs = sorted(
            (_hash(f"{slot}#{vnode}"), slot) for slot in slots for vnode in range(self.VNODES)
        )
        self._points = [point for point, _ in pairs]
        self._owners = [slot for _, slot in pairs]
        self._slots = slots

    def owner(self, client: str, live: set[int]) -> int | None:
        """The slot that serves `client` while the slots in `live` accept."""
        if not self._points:
            return None
        start = bisect.bisect(self._points, _hash(client))
        size = len(self._points)
        for step in range(size):
            slot = self._owners[(start + step) % size]
            if slot in live:
                return slot
        return None

    def choose(
        self, candidates: Sequence[C], require_room: bool = False, client: str | None = None
    ) -> C | None:
        """The live worker that owns `client` on the ring, if it is accepting (room
        or not); round-robin for a connection without a client address."""
        if client is None:
            return self._fallback.choose(candidates, require_room)
        # The ring holds the live slots; a slot that leaves and comes back (restart,
        # reload) gets the same points again, so its clients return to it.
        self._ring(tuple(sorted({c.slot for c in candidates})))
        by_slot = {c.slot: c for c in candidates if c.accepting}
        slot = self.owner(client, set(by_slot))
        return by_slot.get(slot) if slot is not None else None


POLICIES: dict[str, type[RoundRobin] | type[LeastConn] | type[IpHash]] = {
    "rr": RoundRobin,
    "least-conn": LeastConn,
    "ip-hash": IpHash,
}
