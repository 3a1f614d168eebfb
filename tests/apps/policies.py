"""Custom --policy classes for the tests: careless user code running in the front."""

from __future__ import annotations


class Raises:
    def choose(self, candidates, require_room=False, client=None):
        raise RuntimeError("the policy failed on purpose")


class ReturnsGarbage:
    def choose(self, candidates, require_room=False, client=None):
        return "worker one, please"


class LastSlotOnly:
    """Always the highest slot, even when it is not accepting (the front must notice)."""

    def choose(self, candidates, require_room=False, client=None):
        return max(candidates, key=lambda c: c.slot) if candidates else None


class NoChoose:
    pass


class NeedsArguments:
    def __init__(self, weight):
        self.weight = weight

    def choose(self, candidates, require_room=False, client=None):
        return None
