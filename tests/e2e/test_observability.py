"""Admin interface, `rrproxy status`, metrics, logs and the messaging API."""

from __future__ import annotations

import collections
import json
import os
import signal
import stat
import subprocess
import sys
import time
from pathlib import Path

import pytest
from prometheus_client.parser import text_string_to_metric_families

from rrproxy.control import AdminClient
from tests.helpers import PROBE, REPO, RRProxy, get, run_cli, wait_until


def admin_args(tmp_path: Path) -> tuple[str, str]:
    return ("--admin", f"unix:{tmp_path / 'admin.sock'}")


@pytest.mark.parametrize("policy", ["rr", "none"])
def test_status_counts_match_the_requests_sent(tmp_path: Path, policy: str):
    with RRProxy("--policy", policy, *admin_args(tmp_path), PROBE, workers=2) as server:
        served = collections.Counter(get(server.port).header("x-worker-id") for _ in range(30))
        for _ in range(4):
            assert get(server.port, "/missing").status == 404
        served[get(server.port, "/missing").header("x-worker-id")] += 1
        client = AdminClient(f"unix:{tmp_path / 'admin.sock'}")
        status = client.json("GET", "/status")
    assert status["policy"] == policy
    by_id = {str(w["id"]): w for w in status["workers"]}
    assert set(by_id) == {"1", "2"}
    assert status["totals"]["requests_total"] == 35
    assert status["totals"]["connections_total"] == 35
    if policy == "rr":
        assert served == {"1": 15, "2": 16} or served == {"1": 16, "2": 15}
    # The four 404s went somewhere; every worker's count is exact.
    misses = 35 - sum(served.values())
    assert sum(w["requests_total"] for w in by_id.values()) == sum(served.values()) + misses
    assert status["responses"] == {"200": 30, "404": 5}
    for worker in status["workers"]:
        assert worker["state"] == "ready"
        assert worker["pid"] in server.pids.values()
        assert worker["rss_bytes"] > 1_000_000
        assert worker["connections_active"] == 0


def test_metrics_parse_and_match_status(tmp_path: Path):
    with RRProxy(*admin_args(tmp_path), PROBE, workers=2) as server:
        for _ in range(10):
            get(server.port)
        get(server.port, "/raise")
        client = AdminClient(f"unix:{tmp_path / 'admin.sock'}")
        status_code, body = client.request("GET", "/metrics")
        status = client.json("GET", "/status")
    assert status_code == 200
    families = {f.name: f for f in text_string_to_metric_families(body.decode())}
    requests = {
        s.labels["worker"]: s.value
        for s in families["rrproxy_worker_requests"].samples
        if s.name.endswith("_total")
    }
    assert requests == {"1": 6.0, "2": 5.0}
    assert requests == {str(w["id"]): float(w["requests_total"]) for w in status["workers"]}
    responses = {
        s.labels["status"]: s.value
        for s in families["rrproxy_responses"].samples
        if s.name.endswith("_total")
    }
    assert responses == {"200": 10.0, "500": 1.0}
    histogram = families["rrproxy_request_duration_seconds"]
    count = next(s.value for s in histogram.samples if s.name.endswith("_count"))
    assert count == 11.0
    info = next(iter(families["rrproxy_info"].samples))
    assert info.labels["policy"] == "rr"
    assert families["rrproxy_front_connections_handed"].samples[0].value == 11.0
    build = next(iter(families["rrproxy_build_info"].samples)).labels
    assert build["policy"] == "rr" and build["loop"] == "auto" and build["version"]
    classes = {
        (s.labels["worker"], s.labels["class"]): s.value
        for s in families["rrproxy_worker_responses"].samples
        if s.name.endswith("_total")
    }
    assert sum(v for (_, c), v in classes.items() if c == "5xx") == 1.0
    assert sum(v for (_, c), v in classes.items() if c == "2xx") == 10.0
    per_worker = families["rrproxy_worker_request_duration_seconds"]
    counts = [s.value for s in per_worker.samples if s.name.endswith("_count")]
    assert sum(counts) == 11.0
    # Sub-millisecond requests land in buckets of their own, not all in the first.
    bounds = [s.labels["le"] for s in histogram.samples if s.name.endswith("_bucket")]
    assert bounds[:4] == ["0.0001", "0.00025", "0.0005", "0.001"]
    first = next(s.value for s in histogram.samples if s.name.endswith("_bucket"))
    assert first < count  # not every hello request is "<= 100 us"
    assert families["rrproxy_front_queued_connections"].samples[0].value == 0.0
    assert families["rrproxy_front_held_connections"].samples[0].value == 0.0


def test_admin_socket_is_private_and_actions_work(tmp_path: Path):
    sock = tmp_path / "admin.sock"
    with RRProxy(*admin_args(tmp_path), PROBE, workers=2) as server:
        assert stat.S_IMODE(os.stat(sock).st_mode) == 0o600
        client = AdminClient(f"unix:{sock}")
        assert client.json("POST", "/scale?workers=3") == {"workers": 3}
        server.wait_for(r"worker 3 ready")
        assert client.json("POST", "/reload?wait=1") == {"reloaded": True}
        assert len(client.json("GET", "/status")["workers"]) == 3
        with pytest.raises(Exception, match="405"):
            client.json("GET", "/reload")
        with pytest.raises(Exception, match="400"):
            client.json("POST", "/scale?workers=0")
        assert client.json("POST", "/shutdown") == {"stopping": True}
        assert server.wait(30) == 0
    assert not sock.exists()


def test_admin_answers_while_every_worker_is_down(tmp_path: Path):
    with RRProxy(*admin_args(tmp_path), PROBE, workers=2) as server:
        for pid in server.pids.values():
            os.kill(pid, signal.SIGKILL)
        client = AdminClient(f"unix:{tmp_path / 'admin.sock'}")
        status = client.json("GET", "/status")
        assert len(status["workers"]) == 2
        assert status["pid"] == server.proc.pid


def test_tcp_admin_needs_a_token_unless_loopback():
    result = run_cli("--port", "0", "--admin", "0.0.0.0:0", PROBE)
    assert result.returncode == 2
    assert "needs --admin-token" in result.stderr
    with RRProxy("--admin", "127.0.0.1:0", "--admin-token", "s3cret", PROBE, workers=1) as server:
        address = server.wait_for(r"admin 127\.0\.0\.1:(\d+)\)")
        # Port 0 is resolved at bind time; find it from the socket table instead.
        del address
        port = _listening_ports(server.proc.pid) - {server.port}
        (admin_port,) = port
        with pytest.raises(Exception, match="401"):
            AdminClient(f"127.0.0.1:{admin_port}").json("GET", "/status")
        status = AdminClient(f"127.0.0.1:{admin_port}", "s3cret").json("GET", "/status")
        assert status["workers"][0]["state"] == "ready"


def _listening_ports(pid: int) -> set[int]:
    inodes = set()
    for fd in os.listdir(f"/proc/{pid}/fd"):
        try:
            target = os.readlink(f"/proc/{pid}/fd/{fd}")
        except OSError:
            continue
        if target.startswith("socket:["):
            inodes.add(target[8:-1])
    ports = set()
    for line in Path("/proc/net/tcp").read_text().splitlines()[1:]:
        fields = line.split()
        if fields[3] == "0A" and fields[9] in inodes:  # LISTEN
            ports.add(int(fields[1].split(":")[1], 16))
    return ports


def test_rrproxy_status_prints_every_worker(tmp_path: Path):
    with RRProxy(*admin_args(tmp_path), PROBE, workers=3) as server:
        for _ in range(6):
            get(server.port)
        result = subprocess.run(
            [
                sys.executable,
                "-m",
                "rrproxy",
                "status",
                "--admin",
                f"unix:{tmp_path / 'admin.sock'}",
            ],
            capture_output=True,
            text=True,
            timeout=30,
            cwd=REPO,
        )
    assert result.returncode == 0, result.stderr
    lines = result.stdout.splitlines()
    for slot, pid in server.pids.items():
        row = next(line for line in lines if f" {pid} " in line)
        assert row.split()[1] == str(slot)
        assert "ready" in row
    assert "policy rr" in result.stdout
    header = next(line for line in lines if "p50" in line)
    assert "p99" in header and "2xx/4xx/5xx" in header


def test_counters_and_cpu_survive_a_reload_and_rates_are_live(tmp_path: Path):
    """Per-slot totals (requests, CPU seconds) carry over a rolling reload, and /status
    has the live figures the dashboard shows (req/s, CPU %, p50/p99, fairness)."""
    client = AdminClient(f"unix:{tmp_path / 'admin.sock'}")
    with RRProxy(*admin_args(tmp_path), PROBE, workers=2) as server:
        deadline = time.monotonic() + 3
        while time.monotonic() < deadline:
            get(server.port)
        time.sleep(1.5)  # the front samples once a second
        status = client.json("GET", "/status?history=1")
        before = {w["id"]: w for w in status["workers"]}
        for worker in status["workers"]:
            assert worker["cpu_seconds"] > 0
            assert worker["latency_p50_ms"] is not None
            assert 0 < worker["latency_p50_ms"] <= worker["latency_p99_ms"] < 100
            assert worker["responses"]["2xx"] == worker["requests_total"]
        assert status["fairness"]["jain_index"] > 0.9  # rr over two workers
        assert set(status["history"]["workers"]) == {"1", "2"}
        assert any(rate and rate > 0 for rate in status["history"]["workers"]["1"])
        assert client.json("POST", "/reload?wait=1")["reloaded"]
        after = {w["id"]: w for w in client.json("GET", "/status")["workers"]}
        for slot, worker in after.items():
            assert worker["pid"] != before[slot]["pid"]
            assert worker["requests_total"] >= before[slot]["requests_total"]
            # The old process's CPU time stays in the slot's counter (a Prometheus
            # counter must not go down across a reload).
            assert worker["cpu_seconds"] >= before[slot]["cpu_seconds"]


def test_status_without_a_running_rrproxy_says_so(tmp_path: Path):
    result = run_cli("status", "--admin", f"unix:{tmp_path / 'nothing.sock'}")
    assert result.returncode == 1
    assert "cannot reach the admin interface" in result.stderr


def test_broadcast_reaches_every_worker_and_direct_messages_arrive(tmp_path: Path):
    with RRProxy("tests.apps.messaging:handler", workers=3) as server:
        assert json.loads(get(server.port, "/broadcast?v=42").body) == {"sent": True}
        broadcast = {"message": {"hello": "42"}, "from": 1}
        seen: dict[int, dict] = {}

        def everyone_has_it() -> bool:
            for _ in range(3):  # rr: one new connection per worker
                info = json.loads(get(server.port).body)
                seen[info["worker"]] = info
            return len(seen) == 3 and all(broadcast in i["received"] for i in seen.values())

        wait_until(everyone_has_it, 10, what="the broadcast at every worker")
        assert set(seen) == {1, 2, 3}
        for info in seen.values():
            assert info["count"] == 3
            assert {"message": {"hello": "42"}, "from": 1} in info["received"]
        sender = json.loads(get(server.port, "/to-worker?id=3").body)["by"]
        direct = {"message": "direct", "from": sender}

        def the_third_has_it() -> bool:
            for _ in range(3):
                third = json.loads(get(server.port).body)
                if third["worker"] == 3:
                    return direct in third["received"]
            return False

        wait_until(the_third_has_it, 10, what="the direct message at worker 3")
        get(server.port, "/to-front")
        server.wait_for(r"message from worker \d \(pid \d+\): \{'note': 'hi front'\}")
        too_big = get(server.port, "/too-big")
        assert too_big.status == 413
        assert b"exceeds the limit" in too_big.body


def test_logs_say_which_worker_wrote_them_in_text_and_json(tmp_path: Path):
    with RRProxy("--access-log", PROBE, workers=2) as server:
        get(server.port, "/text")
        line = server.wait_for(
            r"\[worker (\d) pid (\d+)\] rrproxy\.access: [\d.:]+ \"GET /text\" "
            r"200 10 [\d.]+ms"
        )
        assert int(line.group(2)) == server.pids[int(line.group(1))]
    with RRProxy("--access-log", "--log-format", "json", PROBE, workers=2) as server:
        get(server.port, "/json")
        server.wait_for(r'"path": "/json"')
        records = [json.loads(x) for x in server.output().splitlines() if x.startswith("{")]
        access = next(r for r in records if r.get("path") == "/json")
        assert access["status"] == 200 and access["method"] == "GET"
        assert server.pids[access["worker"]] == access["pid"]


def test_log_file_is_reopened_on_sigusr1(tmp_path: Path):
    log_file = tmp_path / "rrproxy.log"
    with RRProxy("--log-file", str(log_file), "--access-log", PROBE, workers=2) as server:
        get(server.port, "/before")
        wait_until(lambda: '"GET /before"' in log_file.read_text(), 10, what="the access log")
        rotated = tmp_path / "rrproxy.log.1"
        log_file.rename(rotated)
        server.signal(signal.SIGUSR1)
        wait_until(log_file.exists, 10, 0.05, what="the front's new log file")
        # The workers reopen theirs when the front's message reaches them; they say
        # nothing when they do, so this wait has no event to watch.
        time.sleep(0.3)
        for _ in range(2):
            get(server.port, "/after")
        wait_until(lambda: log_file.read_text().count('"GET /after"') == 2, 10, what="2 lines")
    assert '"GET /before"' in rotated.read_text()
    after = log_file.read_text()
    assert after.count('"GET /after"') == 2
    assert "SIGUSR1: log file reopened" in after
