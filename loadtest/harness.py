"""One measured run: rrproxy with a policy, a scenario, a connection mode."""

from __future__ import annotations

import re
import shutil
import subprocess
import tempfile
from pathlib import Path
from typing import Any

import trio

from .generator import LoadResult, run_load
from .report import jain, max_over_mean
from .scenarios import Scenario
from .server import ServerUnderTest


def _per_worker(before: dict, after: dict, key: str) -> list[float]:
    previous = {w["id"]: w[key] for w in before["workers"]}
    return [w[key] - previous.get(w["id"], 0) for w in after["workers"]]


def run_one(
    scenario: Scenario,
    policy: str,
    mode: str,
    *,
    workers: int,
    concurrency: int,
    duration: float,
    warmup: float,
    rate: float | None,
    seed: int,
    generator: str,
    workdir: Path,
    on_progress: Any = None,
) -> dict[str, Any]:
    keep_alive = mode == "keep-alive"
    admin = Path(tempfile.mkdtemp(prefix="rrproxy-lt-")) / "admin.sock"
    server = ServerUnderTest(scenario.app, policy, workers, admin, scenario.server_args)
    server.start()
    try:
        if warmup > 0:
            _drive(
                scenario,
                server.port,
                concurrency,
                warmup,
                keep_alive,
                rate,
                seed + 1,
                "trio",
                workdir,
            )
        before = server.status()
        load = _drive(
            scenario,
            server.port,
            concurrency,
            duration,
            keep_alive,
            rate,
            seed,
            generator,
            workdir,
            on_progress,
        )
        after = server.status()
    finally:
        server.stop()
        shutil.rmtree(admin.parent, ignore_errors=True)
    requests = _per_worker(before, after, "requests_total")
    connections = _per_worker(before, after, "connections_total")
    cpu = _per_worker(before, after, "cpu_seconds")
    return {
        "scenario": scenario.name,
        "policy": policy,
        "mode": mode,
        "load": load.summary() if isinstance(load, LoadResult) else load,
        "server": {
            "requests_per_worker": [int(x) for x in requests],
            "connections_per_worker": [int(x) for x in connections],
            "requests_total": int(sum(requests)),
            "jain_requests": round(jain(requests), 4),
            "jain_connections": round(jain(connections), 4),
            "max_over_mean": round(max_over_mean(requests), 3),
            "worker_cpu_s": [round(x, 2) for x in cpu],
            "front_cpu_s": round(after["front"]["cpu_seconds"] - before["front"]["cpu_seconds"], 3),
        },
    }


def _drive(
    scenario: Scenario,
    port: int,
    concurrency: int,
    duration: float,
    keep_alive: bool,
    rate: float | None,
    seed: int,
    generator: str,
    workdir: Path,
    on_progress: Any = None,
) -> LoadResult | dict[str, Any]:
    if generator == "wrk":
        return run_wrk(scenario, port, concurrency, duration, keep_alive, workdir)
    return trio.run(
        lambda: run_load(
            scenario,
            "127.0.0.1",
            port,
            concurrency=concurrency,
            duration=duration,
            keep_alive=keep_alive,
            rate=rate,
            seed=seed,
            on_progress=on_progress,
        )
    )


_WRK_LUA = """
math.randomseed(42)
local body = {body}
wrk.method = "{method}"
if body > 0 then wrk.body = string.rep("x", body) end
request = function()
  if math.random() < {slow} then return wrk.format(nil, "/slow") end
  return wrk.format(nil, "/")
end
"""


def run_wrk(
    scenario: Scenario,
    port: int,
    concurrency: int,
    duration: float,
    keep_alive: bool,
    workdir: Path,
) -> dict[str, Any]:
    """wrk (closed-loop only), for rates beyond what a Python client can drive."""
    if shutil.which("wrk") is None:
        raise RuntimeError("--generator wrk needs wrk installed (apt-get install wrk)")
    script = workdir / f"{scenario.name}.lua"
    script.write_text(
        _WRK_LUA.format(
            body=scenario.body_size, method=scenario.method, slow=scenario.slow_fraction
        )
    )
    argv = [
        "wrk",
        "-t1",
        f"-c{concurrency}",
        f"-d{max(1, int(duration))}s",
        "--latency",
        "-s",
        str(script),
    ]
    if not keep_alive:
        argv += ["-H", "Connection: close"]
    output = subprocess.run(
        [*argv, f"http://127.0.0.1:{port}/"], capture_output=True, text=True, timeout=duration + 60
    ).stdout

    def ms(label: str) -> float:
        match = re.search(rf"^\s+{re.escape(label)}\s+([\d.]+)(us|ms|s)\b", output, re.M)
        if not match:
            return 0.0
        value, unit = float(match.group(1)), match.group(2)
        return value / 1000 if unit == "us" else value * 1000 if unit == "s" else value

    completed = int(re.search(r"(\d+) requests in", output).group(1))  # type: ignore[union-attr]
    errors: dict[str, int] = {}
    socket_errors = re.search(
        r"Socket errors: connect (\d+), read (\d+), write (\d+), "
        r"timeout (\d+)",
        output,
    )
    if socket_errors:
        for name, value in zip(
            ("connect", "read", "write", "timeout"), socket_errors.groups(), strict=True
        ):
            if int(value):
                errors[name] = int(value)
    non2xx = re.search(r"Non-2xx or 3xx responses: (\d+)", output)
    if non2xx:
        errors["non-2xx"] = int(non2xx.group(1))
    rps = float(re.search(r"Requests/sec:\s+([\d.]+)", output).group(1))  # type: ignore[union-attr]
    max_match = re.search(r"Latency\s+\S+\s+\S+\s+([\d.]+)(us|ms|s)", output)
    max_ms = 0.0
    if max_match:
        value, unit = float(max_match.group(1)), max_match.group(2)
        max_ms = value / 1000 if unit == "us" else value * 1000 if unit == "s" else value
    return {
        "duration_s": duration,
        "completed": completed,
        "errors": errors,
        "throughput_rps": rps,
        "latency_ms": {
            "p50": ms("50%"),
            "p90": ms("90%"),
            "p99": ms("99%"),
            "p99.9": ms("99%"),
            "max": max_ms,
            "mean": 0.0,
        },
        "generator": "wrk",
    }
