"""Every policy serves, reloads, scales and counts; least-conn and ip-hash do what
they promise."""

from __future__ import annotations

import collections
import os
import signal
import time
from pathlib import Path

import pytest

from rrproxy.control import AdminClient
from tests import helpers
from tests.helpers import PROBE, RawClient, RRProxy


def get_from(port: int, source: str, path: str = "/") -> tuple[int, str | None]:
    response = helpers.get_from(port, source, path)
    return response.status, response.header("x-worker-id")


@pytest.mark.parametrize("policy", ["rr", "none", "reuseport", "least-conn", "ip-hash"])
def test_every_policy_serves_reloads_scales_and_counts(tmp_path: Path, policy: str):
    admin = f"unix:{tmp_path / 'admin.sock'}"
    with RRProxy("--policy", policy, "--admin", admin, PROBE, workers=2) as server:
        sources = [f"127.0.0.{i}" for i in range(1, 21)]
        statuses = collections.Counter()
        for source in sources:
            statuses[get_from(server.port, source)[0]] += 1
        server.signal(signal.SIGHUP)
        while "reload complete" not in server.output():
            statuses[get_from(server.port, sources[len(statuses) % 20])[0]] += 1
            time.sleep(0.02)
            assert "reload aborted" not in server.output()
        server.signal(signal.SIGTTIN)
        server.wait_for(r"worker 3 ready")
        for source in sources:
            statuses[get_from(server.port, source)[0]] += 1
        sent = sum(statuses.values())
        status = AdminClient(admin).json("GET", "/status")
    assert statuses == {200: sent}
    assert status["policy"] == policy
    assert status["totals"]["requests_total"] == sent
    assert [w["id"] for w in status["workers"]] == [1, 2, 3]


def test_ip_hash_keeps_each_client_on_one_worker_across_restarts():
    with RRProxy("--policy", "ip-hash", PROBE, workers=3) as server:
        sources = [f"127.0.1.{i}" for i in range(1, 31)]
        first = {s: get_from(server.port, s)[1] for s in sources}
        assert len(set(first.values())) == 3  # 30 clients spread over 3 workers
        assert {s: get_from(server.port, s)[1] for s in sources} == first
        # Worker 2 goes away and comes back: only its clients move, then return.
        victim = server.pids[2]
        os.kill(victim, signal.SIGKILL)
        server.wait_for(rf"worker 2 \(pid {victim}\) exited")
        during = {s: get_from(server.port, s)[1] for s in sources}
        moved = {s for s in sources if during[s] != first[s]}
        assert moved <= {s for s in sources if first[s] == "2"}
        server.wait_for(rf"worker 2 ready \(pid (?!{victim}\))\d+\)")
        time.sleep(0.2)
        assert {s: get_from(server.port, s)[1] for s in sources} == first


def test_least_conn_sends_new_connections_to_the_least_loaded_worker():
    with RRProxy("--policy", "least-conn", "--keep-alive", "60", PROBE, workers=2) as server:
        victim = server.pids[2]
        os.kill(victim, signal.SIGKILL)
        server.wait_for(rf"worker 2 \(pid {victim}\) exited")
        # While worker 2 restarts, four kept-alive connections all land on worker 1.
        held = []
        for _ in range(4):
            client = RawClient(server.port)
            client.send(b"GET / HTTP/1.1\r\nHost: t\r\n\r\n")
            held.append((client, client.read_response().header("x-worker-id")))
        server.wait_for(rf"worker 2 ready \(pid (?!{victim}\))\d+\)")
        time.sleep(0.3)
        # Worker 2 is back with no connections: least-conn gives it the next four
        # (round-robin would have split them 2/2).
        fresh = []
        for _ in range(4):
            client = RawClient(server.port)
            client.send(b"GET / HTTP/1.1\r\nHost: t\r\n\r\n")
            fresh.append((client, client.read_response().header("x-worker-id")))
            time.sleep(0.05)
        assert [worker for _, worker in held] == ["1"] * 4
        assert [worker for _, worker in fresh] == ["2"] * 4
        for client, _ in held + fresh:
            client.close()
