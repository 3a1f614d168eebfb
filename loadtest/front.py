"""`python -m loadtest front`: what the front costs per handed-off connection, and its
ceiling (connections per second on one core), next to Node's cluster primary.

Both run `rr` with 2 workers that do nothing but take connections (read, write a
canned response, close: loadtest/null_worker.py and peers/node_null.js), under `wrk
-t1 -c64 -H "Connection: close"`. The front's (or primary's) CPU time is read from
/proc before and after; CPU per connection = that time / connections served, and
the ceiling = 1 s of CPU / CPU per connection. Targets alternate for --rounds.
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import statistics
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

from .bench import _free_port, _wait_http, wrk
from .processes import register, stop_process_group
from .server import REPO

_TICKS = os.sysconf("SC_CLK_TCK")


def cpu_seconds(pid: int) -> float:
    with open(f"/proc/{pid}/stat") as stat:
        fields = stat.read().rsplit(")", 1)[1].split()
    return (int(fields[11]) + int(fields[12])) / _TICKS


def _targets(port: int) -> dict[str, dict[str, Any]]:
    return {
        "rrproxy rr front": {
            "argv": [
                sys.executable,
                "-m",
                "rrproxy",
                "--port",
                str(port),
                "--workers",
                "2",
                "--log-level",
                "warning",
                "--admin",
                "off",
                "workers.hello:handler",
            ],
            "env": {"RRPROXY_WORKER_MODULE": "loadtest.null_worker"},
        },
        "node cluster rr primary": {
            "argv": ["node", "loadtest/peers/node_null.js"],
            "env": {"NODE_CLUSTER_SCHED_POLICY": "rr", "PORT": str(port), "WORKERS": "2"},
            "binary": "node",
        },
    }


def run_one(name: str, duration: float, warmup: float) -> dict[str, Any]:
    port = _free_port()
    target = _targets(port)[name]
    proc = register(
        subprocess.Popen(
            target["argv"],
            cwd=REPO,
            env={**os.environ, **target.get("env", {})},
            stdout=subprocess.DEVNULL,
            stderr=subprocess.DEVNULL,
            start_new_session=True,
        )
    )
    try:
        _wait_http(port)
        wrk(port, warmup, close=True)
        before = cpu_seconds(proc.pid)
        result = wrk(port, duration, close=True)
        cpu = cpu_seconds(proc.pid) - before
        connections = result["requests"]
        per_connection = cpu / connections * 1e6 if connections else 0.0
        return {
            "connections_per_s": result["rps"],
            "errors": result["errors"],
            "front_cpu_s": round(cpu, 3),
            "front_share_of_a_core": round(cpu / duration, 3),
            "us_per_connection": round(per_connection, 1),
            "ceiling_per_core": round(1e6 / per_connection) if per_connection else None,
        }
    finally:
        stop_process_group(proc)


def main(argv: list[str]) -> int:
    parser = argparse.ArgumentParser(prog="python -m loadtest front", description=__doc__)
    parser.add_argument("--rounds", type=int, default=3)
    parser.add_argument("--duration", type=float, default=8.0)
    parser.add_argument("--warmup", type=float, default=2.0)
    parser.add_argument("--out", type=Path, default=None)
    args = parser.parse_args(argv)
    if shutil.which("wrk") is None:
        print("loadtest front: needs wrk (apt-get install wrk)", file=sys.stderr)
        return 2
    names = [n for n, t in _targets(0).items() if shutil.which(t.get("binary", "python3"))]
    samples: dict[str, list[dict[str, Any]]] = {n: [] for n in names}
    for round_index in range(args.rounds):
        for name in names:
            result = run_one(name, args.duration, args.warmup)
            samples[name].append(result)
            print(f"round {round_index + 1} {name:25} {json.dumps(result)}", flush=True)
    summary = {
        name: {
            key: statistics.median(r[key] for r in runs)
            for key in ("connections_per_s", "us_per_connection", "front_share_of_a_core")
        }
        for name, runs in samples.items()
    }
    for values in summary.values():
        values["ceiling_per_core"] = round(1e6 / values["us_per_connection"])
    out = args.out or REPO / "loadtest" / "out" / ("front-" + time.strftime("%Y%m%d-%H%M%S"))
    out.mkdir(parents=True, exist_ok=True)
    results = {"command": "python -m loadtest front " + " ".join(argv), "samples": samples}
    results["summary"] = summary
    (out / "results.json").write_text(json.dumps(results, indent=1))
    lines = [
        "| target | connections/s | CPU µs per connection | share of a core | ceiling per core |",
        "| --- | --- | --- | --- | --- |",
    ]
    for name, values in summary.items():
        lines.append(
            f"| {name} | {values['connections_per_s']:,.0f} | {values['us_per_connection']:.1f} "
            f"| {values['front_share_of_a_core']:.2f} | {values['ceiling_per_core']:,} |"
        )
    (out / "report.md").write_text("\n".join(lines) + "\n")
    print("\n".join(lines))
    print(f"results in {out}")
    return 0
