from __future__ import annotations

from dataclasses import dataclass

from .policies import RoundRobin


@dataclass
class W:
    name: str
    accepting: bool = True
    has_room: bool = True


def test_rotation_is_strict():
    workers = [W("a"), W("b"), W("c"), W("d")]
    rr = RoundRobin()
    picks = [rr.choose(workers).name for _ in range(40)]
    assert picks == ["a", "b", "c", "d"] * 10


def test_workers_without_room_are_passed_over_then_used_as_a_last_resort():
    a, b, c = W("a"), W("b", has_room=False), W("c")
    rr = RoundRobin()
    assert [rr.choose([a, b, c]).name for _ in range(4)] == ["a", "c", "a", "c"]
    a.has_room = c.has_room = False
    assert rr.choose([a, b, c]).name in {"a", "b", "c"}


def test_workers_not_accepting_are_never_chosen():
    a, b = W("a", accepting=False, has_room=False), W("b", accepting=False, has_room=False)
    assert RoundRobin().choose([a, b]) is None
    assert RoundRobin().choose([]) is None


def test_rotation_survives_the_list_changing():
    rr = RoundRobin()
    workers = [W("a"), W("b"), W("c")]
    assert rr.choose(workers).name == "a"
    workers.pop(0)  # a leaves
    picks = [rr.choose(workers).name for _ in range(4)]
    assert sorted(picks) == ["b", "b", "c", "c"]
