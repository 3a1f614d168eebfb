"""One measured run: rrproxy with a policy, a scenario, a connection mode."""

from __future__ import annotations

import shutil
import tempfile
from pathlib import Path
from typing import Any

import trio

from . import wrk as wrk_runner
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
    result = wrk_runner.run(
        f"http://127.0.0.1:{port}/",
        duration,
        concurrency,
        close=not keep_alive,
        script=script.read_text(),
    )
    errors = dict(result["errors_by_kind"])
    if "status" in errors:
        errors["non-2xx"] = errors.pop("status")
    return {
        "duration_s": duration,
        "completed": result["requests"],
        "errors": errors,
        "throughput_rps": result["rps"],
        "latency_ms": {
            "p50": result["p50_ms"],
            "p90": result["p90_ms"],
            "p99": result["p99_ms"],
            "p99.9": result["p999_ms"],
            "max": result["max_ms"],
            "mean": result["mean_ms"],
        },
        "generator": "wrk",
    }
