"""The load-test harness end to end, on short runs."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pytest

from tests.helpers import REPO


def _run(out: Path, *args: str) -> dict:
    result = subprocess.run(
        [sys.executable, "-m", "loadtest", "--out", str(out), *args],
        cwd=REPO,
        capture_output=True,
        text=True,
        timeout=300,
    )
    assert result.returncode == 0, result.stdout[-3000:] + result.stderr[-3000:]
    return json.loads((out / "results.json").read_text())


@pytest.mark.timeout(300)  # 12 short runs, each starting and stopping an rrproxy
def test_harness_reports_and_per_worker_numbers_add_up(tmp_path: Path):
    results = _run(
        tmp_path,
        "--scenarios",
        "hello,mixed",
        "--modes",
        "keep-alive,close",
        "--policies",
        "rr,none,least-conn",
        "--workers",
        "2",
        "--concurrency",
        "4",
        "--duration",
        "2",
        "--warmup",
        "0.3",
        "--seed",
        "3",
    )
    for name in ("results.json", "report.md", "throughput_p99.png", "worker_share.png"):
        assert (tmp_path / name).stat().st_size > 0
    assert len(results["runs"]) == 12
    for run in results["runs"]:
        load, server = run["load"], run["server"]
        assert load["completed"] > 0 and not load["errors"]
        # Server-side truth and client-side counts agree exactly: every request the
        # generator completed was counted by exactly one worker.
        assert sum(server["requests_per_worker"]) == load["completed"]
        assert len(server["requests_per_worker"]) == 2
        assert 0.5 <= server["jain_requests"] <= 1.0
        latency = load["latency_ms"]
        assert 0 < latency["p50"] <= latency["p99"] <= latency["max"]
        if run["mode"] == "close":
            assert server["connections_per_worker"] == server["requests_per_worker"]
    assert results["machine"]["cpus"] >= 1
    assert "rr" in (tmp_path / "report.md").read_text()


@pytest.mark.timeout(300)
def test_harness_open_loop_and_wrk(tmp_path: Path, wrk: str):
    open_loop = _run(
        tmp_path / "open",
        "--scenarios",
        "slow-io",
        "--modes",
        "keep-alive",
        "--policies",
        "rr",
        "--workers",
        "2",
        "--concurrency",
        "8",
        "--rate",
        "100",
        "--duration",
        "2",
        "--warmup",
        "0",
        "--no-charts",
    )
    load = open_loop["runs"][0]["load"]
    assert 150 <= load["completed"] <= 201  # ~100/s for 2 s
    assert load["latency_ms"]["p50"] >= 50  # the app awaits 50 ms
    with_wrk = _run(
        tmp_path / "wrk",
        "--scenarios",
        "upload",
        "--modes",
        "close",
        "--policies",
        "rr",
        "--workers",
        "2",
        "--concurrency",
        "4",
        "--duration",
        "2",
        "--warmup",
        "0",
        "--generator",
        "wrk",
        "--no-charts",
    )
    run = with_wrk["runs"][0]
    assert run["load"]["generator"] == "wrk"
    assert run["load"]["completed"] > 0 and not run["load"]["errors"]
    # wrk counts requests it started; the server counted each one it answered.
    assert abs(run["server"]["requests_total"] - run["load"]["completed"]) <= 4


@pytest.mark.timeout(300)
def test_bench_runs_targets_side_by_side(tmp_path: Path, wrk: str):
    result = subprocess.run(
        [
            sys.executable,
            "-m",
            "loadtest",
            "bench",
            "--targets",
            "rrproxy rr,rrproxy none",
            "--rounds",
            "1",
            "--duration",
            "1",
            "--warmup",
            "1",
            "--out",
            str(tmp_path),
        ],
        cwd=REPO,
        capture_output=True,
        text=True,
        timeout=300,
    )
    assert result.returncode == 0, result.stdout[-3000:] + result.stderr[-3000:]
    results = json.loads((tmp_path / "results.json").read_text())
    assert (tmp_path / "bench.png").stat().st_size > 0
    assert "| rrproxy none |" in (tmp_path / "bench.md").read_text()
    for mode in ("keep-alive", "close"):
        rows = results["summary"][mode]
        assert rows["rrproxy rr"]["ratio_to_rrproxy_rr"] == 1.0
        assert rows["rrproxy none"]["median_rps"] > 0
        assert rows["rrproxy rr"]["errors"] == rows["rrproxy none"]["errors"] == 0
    # The front's cost per handed-over connection is measured under rr.
    assert results["summary"]["close"]["rrproxy rr"]["front_us_per_handoff"] > 0


def test_an_interrupted_bench_stops_every_server_and_wrk_it_started(wrk):
    """SIGINT in the middle of a run: nothing the bench started is left running."""
    import os
    import signal
    import subprocess
    import sys
    import time

    from tests.helpers import REPO, wait_until

    bench = subprocess.Popen(
        [sys.executable, "-m", "loadtest", "bench", "--targets", "rrproxy rr", "--rounds", "1",
         "--duration", "20", "--warmup", "1"],
        cwd=REPO, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
    )  # fmt: skip

    def cmdline(pid: int) -> bytes:
        try:
            with open(f"/proc/{pid}/cmdline", "rb") as file:
                return file.read()
        except OSError:
            return b""

    def started_by_bench() -> dict[int, bytes]:
        running = {int(e): cmdline(int(e)) for e in os.listdir("/proc") if e.isdigit()}
        return {
            pid: argv
            for pid, argv in running.items()
            if pid not in before
            and (argv.startswith((b"wrk\x00", b"rrproxy: front")) or b"-m\x00rrproxy\x00" in argv)
        }

    before: set[int] = {int(e) for e in os.listdir("/proc") if e.isdigit()}
    try:
        wait_until(
            lambda: any(a.startswith(b"wrk") for a in started_by_bench().values()),
            60,
            0.2,
            what="wrk running",
        )
        bench.send_signal(signal.SIGINT)
        assert bench.wait(20) != 0
        time.sleep(1.0)
        assert started_by_bench() == {}
        assert "interrupted" in bench.stderr.read()
    finally:
        if bench.poll() is None:
            bench.kill()


def test_the_harness_names_the_extra_when_its_libraries_are_missing():
    import subprocess
    import sys

    from tests.helpers import REPO

    code = (
        "import sys; sys.modules['hdrh'] = None\n"
        "from loadtest.__main__ import main\nsys.exit(main())"
    )
    result = subprocess.run(
        [sys.executable, "-c", code], cwd=REPO, capture_output=True, text=True, timeout=60
    )
    assert result.returncode == 2
    assert "rrproxy[loadtest]" in result.stderr and "Traceback" not in result.stderr
