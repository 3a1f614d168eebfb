"""A custom scheduling policy: `rrproxy --policy workers.lowest_slot_policy:LowestSlot`.

Every connection goes to the worker with the lowest slot id that has room, so the
others only take work when it is full (--limit-concurrency) or gone: a "fill the
first worker" policy, handy when workers keep per-process caches warm. It implements
the same protocol as the built-in policies (rrproxy/front/policies.py):

    choose(candidates, require_room=False, client=None) -> candidate | None

Each candidate has `slot` (a stable id), `accepting` (ready and taking handoffs),
`has_room` (accepting and under the soft limits) and `load` (open plus handed-over
connections). `client` is the peer's address ("1.2.3.4"), or None for a Unix socket.
choose() runs on the front's event loop for every connection: keep it quick, and
never block in it.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import TypeVar

from rrproxy.front.policies import Candidate

C = TypeVar("C", bound=Candidate)


class LowestSlot:
    name = "lowest-slot"

    def choose(
        self, candidates: Sequence[C], require_room: bool = False, client: str | None = None
    ) -> C | None:
        ordered = sorted(candidates, key=lambda candidate: candidate.slot)
        for candidate in ordered:
            if candidate.has_room:
                return candidate
        if require_room:
            return None
        return next((candidate for candidate in ordered if candidate.accepting), None)
