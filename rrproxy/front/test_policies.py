from __future__ import annotations

import collections
from collections.abc import Sequence
from dataclasses import dataclass

from .policies import IpHash, LeastConn, Policy, RoundRobin


@dataclass
class W:
    slot: int
    accepting: bool = True
    has_room: bool = True
    load: int = 0

    @property
    def name(self) -> str:
        return "abcdefgh"[self.slot - 1]


def workers(count: int) -> list[W]:
    return [W(slot) for slot in range(1, count + 1)]


def pick(
    policy: Policy, pool: Sequence[W], require_room: bool = False, client: str | None = None
) -> W:
    """choose(), where the test has a worker to pick."""
    chosen = policy.choose(pool, require_room, client)
    assert chosen is not None
    return chosen


# --- round-robin -----------------------------------------------------------------


def test_rotation_is_strict() -> None:
    pool = workers(4)
    rr = RoundRobin()
    picks = [pick(rr, pool).name for _ in range(40)]
    assert picks == ["a", "b", "c", "d"] * 10


def test_workers_without_room_are_passed_over_then_used_as_a_last_resort() -> None:
    a, b, c = W(1), W(2, has_room=False), W(3)
    rr = RoundRobin()
    assert [pick(rr, [a, b, c]).name for _ in range(4)] == ["a", "c", "a", "c"]
    a.has_room = c.has_room = False
    assert rr.choose([a, b, c], require_room=True) is None
    assert pick(rr, [a, b, c]).name in {"a", "b", "c"}


def test_workers_not_accepting_are_never_chosen() -> None:
    a, b = W(1, accepting=False, has_room=False), W(2, accepting=False, has_room=False)
    for policy in (RoundRobin(), LeastConn(), IpHash()):
        assert policy.choose([a, b], client="10.0.0.1") is None
        assert policy.choose([], client="10.0.0.1") is None


def test_rotation_survives_the_list_changing() -> None:
    rr = RoundRobin()
    pool = workers(3)
    assert pick(rr, pool).name == "a"
    pool.pop(0)  # a leaves
    picks = [pick(rr, pool).name for _ in range(4)]
    assert sorted(picks) == ["b", "b", "c", "c"]


# --- least-conn ------------------------------------------------------------------


def test_least_conn_picks_the_least_loaded() -> None:
    a, b, c = W(1, load=5), W(2, load=1), W(3, load=3)
    policy = LeastConn()
    assert policy.choose([a, b, c]) is b
    b.load = 9
    assert policy.choose([a, b, c]) is c


def test_least_conn_under_uneven_counts_evens_them_out() -> None:
    pool = [W(1, load=10), W(2, load=0), W(3, load=4)]
    policy = LeastConn()
    for _ in range(30):
        pick(policy, pool).load += 1  # each handoff adds a connection
    assert sorted(w.load for w in pool) == [14, 15, 15]


def test_least_conn_breaks_ties_round_robin() -> None:
    pool = workers(3)
    policy = LeastConn()
    picks = collections.Counter(pick(policy, pool).name for _ in range(30))
    assert picks == {"a": 10, "b": 10, "c": 10}


def test_least_conn_prefers_room_over_load() -> None:
    full, free = W(1, load=0, has_room=False), W(2, load=50)
    assert LeastConn().choose([full, free]) is free
    assert LeastConn().choose([full], require_room=True) is None
    assert LeastConn().choose([full]) is full


# --- ip-hash ---------------------------------------------------------------------

CLIENTS = [f"10.{i // 256}.{i % 256}.7" for i in range(2000)]


def test_ip_hash_is_stable_and_spreads() -> None:
    pool = workers(4)
    policy = IpHash()
    first = {client: pick(policy, pool, client=client).slot for client in CLIENTS}
    again = {client: pick(policy, pool, client=client).slot for client in CLIENTS}
    assert first == again
    share = collections.Counter(first.values())
    assert set(share) == {1, 2, 3, 4}
    assert max(share.values()) / min(share.values()) < 1.5


def test_ip_hash_moves_only_the_leaving_workers_clients_and_they_come_back() -> None:
    pool = workers(4)
    policy = IpHash()
    before = {client: pick(policy, pool, client=client).slot for client in CLIENTS}
    pool[2].accepting = False  # worker 3 is restarting
    during = {client: pick(policy, pool, client=client).slot for client in CLIENTS}
    moved = {client for client in CLIENTS if before[client] != during[client]}
    assert moved == {client for client in CLIENTS if before[client] == 3}
    assert all(during[client] != 3 for client in moved)
    pool[2].accepting = True
    after = {client: pick(policy, pool, client=client).slot for client in CLIENTS}
    assert after == before


def test_ip_hash_adding_a_worker_moves_about_its_share() -> None:
    policy = IpHash()
    four = workers(4)
    before = {client: pick(policy, four, client=client).slot for client in CLIENTS}
    five = workers(5)
    after = {client: pick(policy, five, client=client).slot for client in CLIENTS}
    moved = [client for client in CLIENTS if before[client] != after[client]]
    assert all(after[client] == 5 for client in moved)  # only to the new worker
    assert 0.1 < len(moved) / len(CLIENTS) < 0.3  # about 1/5


def test_ip_hash_without_a_client_address_falls_back_to_rotation() -> None:
    pool = workers(2)
    policy = IpHash()
    assert [pick(policy, pool).name for _ in range(4)] == ["a", "b", "a", "b"]
