"""--policy module:Class: a policy of the user's own, held to the same protocol as
the built-in ones (policies.Policy).

It is the one piece of user code that runs in the front, so it is guarded the way
the front guards against a worker: a choose() that raises or returns something that
is not an accepting candidate is logged (once a minute at most) and the connection
goes round-robin instead. The front never dies of a policy. (A choose() that blocks
does stall the front: it runs on the front's loop, which the README says.)
"""

from __future__ import annotations

import importlib
import logging
import time
from collections.abc import Sequence
from typing import Any

from ..listeners import BindError
from .policies import POLICIES, C, Policy, RoundRobin

log = logging.getLogger("rrproxy.front")

#: Seconds between two log lines about a misbehaving policy.
COMPLAINT_INTERVAL = 60.0


def load_policy(name: str) -> Policy:
    """A built-in policy, or module:Class instantiated with no arguments (BindError,
    so exit 2, if that fails)."""
    if name in POLICIES:
        return POLICIES[name]()
    module_name, _, attr = name.partition(":")
    try:
        target: Any = importlib.import_module(module_name)
        for part in attr.split("."):
            target = getattr(target, part)
        policy = target()
    except Exception as exc:
        raise BindError(f"--policy {name}: {type(exc).__name__}: {exc}") from None
    if not callable(getattr(policy, "choose", None)):
        raise BindError(f"--policy {name}: {type(policy).__name__} has no choose() method")
    return GuardedPolicy(policy, name)


class GuardedPolicy:
    """A user's policy behind the guard described in the module docstring; `failures`
    counts the choices it got wrong."""

    def __init__(self, inner: Any, name: str) -> None:
        self.inner = inner
        self.name = name
        self.failures = 0
        self._fallback = RoundRobin()
        self._complained_at = -COMPLAINT_INTERVAL

    def choose(
        self, candidates: Sequence[C], require_room: bool = False, client: str | None = None
    ) -> C | None:
        """The user's choice when it is an accepting candidate (with room, when
        `require_room`), or None if it says none; round-robin's choice otherwise."""
        try:
            # Checked below: a non-None answer must be one of `candidates`.
            chosen: C | None = self.inner.choose(candidates, require_room, client)
        except Exception as exc:
            return self._instead(candidates, require_room, f"raised {exc!r}", exc)
        if chosen is None:
            return None
        if not any(chosen is candidate for candidate in candidates):
            return self._instead(candidates, require_room, f"returned {chosen!r}, not a candidate")
        if not chosen.accepting or (require_room and not chosen.has_room):
            return self._instead(
                candidates, require_room, f"chose worker {chosen.slot}, which is not accepting"
            )
        return chosen

    def _instead(
        self,
        candidates: Sequence[C],
        require_room: bool,
        what: str,
        exc: BaseException | None = None,
    ) -> C | None:
        self.failures += 1
        now = time.monotonic()
        if now - self._complained_at >= COMPLAINT_INTERVAL:
            self._complained_at = now
            log.error(
                "policy %s %s (%d times so far); round-robin used instead",
                self.name,
                what,
                self.failures,
                exc_info=exc,
            )
        return self._fallback.choose(candidates, require_room)
