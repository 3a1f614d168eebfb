"""Scheduling policies for the front: which worker gets the next connection.

Pure selection logic over anything that says whether it is `accepting` (ready, its
channel open and not full, under the hard limit of unanswered handoffs) and whether
it `has_room` (accepting and under the soft limit). No sockets: unit-tested as is.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Protocol, TypeVar


class Candidate(Protocol):
    @property
    def accepting(self) -> bool: ...

    @property
    def has_room(self) -> bool: ...


C = TypeVar("C", bound=Candidate)


class Policy(Protocol):
    name: str

    def choose(self, candidates: Sequence[C], require_room: bool = False) -> C | None:
        """A candidate with room; failing that (unless `require_room`) one that is
        at least accepting; None if there is none."""
        ...


class RoundRobin:
    """Node's SCHED_RR: the next worker in rotation. A worker without room (a
    blocked loop stops answering handoffs, or it is at --limit-concurrency) is
    passed over while another has room; when none has room, the next one still
    accepting takes it, so a flood of idle connections can delay dispatch but
    never stop it."""

    name = "rr"

    def __init__(self) -> None:
        self._next = 0

    def choose(self, candidates: Sequence[C], require_room: bool = False) -> C | None:
        count = len(candidates)
        if not count:
            return None
        start = self._next % count
        fallback = -1
        for step in range(count):
            index = (start + step) % count
            candidate = candidates[index]
            if candidate.has_room:
                self._next = index + 1
                return candidate
            if fallback < 0 and candidate.accepting:
                fallback = index
        if fallback >= 0 and not require_room:
            self._next = fallback + 1
            return candidates[fallback]
        return None
