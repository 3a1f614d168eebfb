"""`python -m loadtest bench`: rrproxy next to the servers users would run instead.

Each target serves the same hello app with 2 workers; targets alternate (A B C ...)
for several rounds, each measured with `wrk -t1 -c64` after a warm-up, with
keep-alive and with `Connection: close`. Medians and ratios to rrproxy are reported.
"""

from __future__ import annotations

import argparse
import json
import os
import re
import shutil
import socket
import statistics
import subprocess
import sys
import tempfile
import time
import urllib.request
from pathlib import Path
from typing import Any

from rrproxy.control import AdminClient

from . import wrk as wrk_runner
from .processes import register, stop_process_group
from .server import REPO

PY = sys.executable


def _rrproxy(policy: str, app: str, loop: str = "auto", *extra: str) -> list[str]:
    return [
        PY,
        "-m",
        "rrproxy",
        "--host",
        "127.0.0.1",
        "--port",
        "{port}",
        "--workers",
        "2",
        "--policy",
        policy,
        "--log-level",
        "warning",
        "--admin",
        "unix:{admin}",
        "--loop",
        loop,
        *extra,
        app,
    ]


TARGETS: dict[str, dict[str, Any]] = {
    "rrproxy rr": {"argv": _rrproxy("rr", "workers.hello:handler"), "rrproxy": True},
    "rrproxy none": {"argv": _rrproxy("none", "workers.hello:handler"), "rrproxy": True},
    "rrproxy rr asgi trio": {
        "argv": _rrproxy("rr", "workers.asgi_hello:app", "trio"),
        "rrproxy": True,
    },
    "rrproxy rr asgi asyncio": {
        "argv": _rrproxy("rr", "workers.asgi_hello:app", "asyncio"),
        "rrproxy": True,
    },
    "rrproxy rr asgi uvloop": {
        "argv": _rrproxy("rr", "workers.asgi_hello:app", "uvloop"),
        "rrproxy": True,
        "module": "uvloop",
    },
    "rrproxy none asgi uvloop": {
        "argv": _rrproxy("none", "workers.asgi_hello:app", "uvloop"),
        "rrproxy": True,
        "module": "uvloop",
    },
    "rrproxy wsgi flask trio": {
        "argv": _rrproxy("rr", "workers.flask_hello:app", "trio", "--threads", "4"),
        "rrproxy": True,
        "module": "flask",
    },
    "rrproxy wsgi flask uvloop": {
        "argv": _rrproxy("rr", "workers.flask_hello:app", "uvloop", "--threads", "4"),
        "rrproxy": True,
        "module": "flask",
    },
    "rrproxy none wsgi flask uvloop": {
        "argv": _rrproxy("none", "workers.flask_hello:app", "uvloop", "--threads", "4"),
        "rrproxy": True,
        "module": "flask",
    },
    "gunicorn gthread flask": {
        "argv": [
            PY,
            "-m",
            "gunicorn",
            "-w",
            "2",
            "-k",
            "gthread",
            "--threads",
            "4",
            "-b",
            "127.0.0.1:{port}",
            "--log-level",
            "warning",
            "workers.flask_hello:app",
        ],
        "module": "flask",
    },
    "gunicorn sync flask": {
        "argv": [
            PY,
            "-m",
            "gunicorn",
            "-w",
            "2",
            "-k",
            "sync",
            "-b",
            "127.0.0.1:{port}",
            "--log-level",
            "warning",
            "workers.flask_hello:app",
        ],
        "module": "flask",
    },
    "gunicorn uvicorn-h11": {
        "argv": [
            PY,
            "-m",
            "gunicorn",
            "-w",
            "2",
            "-k",
            "uvicorn_worker.UvicornH11Worker",
            "-b",
            "127.0.0.1:{port}",
            "--log-level",
            "warning",
            "workers.asgi_hello:app",
        ],
        "module": "uvicorn_worker",
    },
    "hypercorn trio": {
        "argv": [
            PY,
            "-m",
            "hypercorn",
            "-k",
            "trio",
            "-w",
            "2",
            "-b",
            "127.0.0.1:{port}",
            "workers.asgi_hello:app",
        ],
        "module": "hypercorn",
    },
    "hypercorn asyncio": {
        "argv": [
            PY,
            "-m",
            "hypercorn",
            "-k",
            "uvloop",
            "-w",
            "2",
            "-b",
            "127.0.0.1:{port}",
            "workers.asgi_hello:app",
        ],
        "module": "hypercorn",
        "loop": "uvloop",
    },
    "granian asgi": {
        "argv": [
            PY,
            "-m",
            "granian",
            "--interface",
            "asgi",
            "--workers",
            "2",
            "--loop",
            "uvloop",
            "--host",
            "127.0.0.1",
            "--port",
            "{port}",
            "--log-level",
            "warning",
            "workers.asgi_hello:app",
        ],
        "module": "granian",
        "loop": "uvloop (Rust HTTP)",
    },
    "uvicorn h11 uvloop": {
        "argv": [
            PY,
            "-m",
            "uvicorn",
            "--workers",
            "2",
            "--http",
            "h11",
            "--loop",
            "uvloop",
            "--host",
            "127.0.0.1",
            "--port",
            "{port}",
            "--log-level",
            "warning",
            "workers.asgi_hello:app",
        ],
        "module": "uvicorn",
    },
    "uvicorn standard": {
        # uvicorn[standard] as its users run it: httptools and uvloop.
        "argv": [
            PY,
            "-m",
            "uvicorn",
            "--workers",
            "2",
            "--http",
            "httptools",
            "--loop",
            "uvloop",
            "--host",
            "127.0.0.1",
            "--port",
            "{port}",
            "--log-level",
            "warning",
            "workers.asgi_hello:app",
        ],
        "module": "httptools",
    },
    "node cluster rr": {
        "argv": ["node", "loadtest/peers/node_cluster.js"],
        "env": {"NODE_CLUSTER_SCHED_POLICY": "rr"},
        "binary": "node",
    },
    "node cluster none": {
        "argv": ["node", "loadtest/peers/node_cluster.js"],
        "env": {"NODE_CLUSTER_SCHED_POLICY": "none"},
        "binary": "node",
    },
}
MODES = ("keep-alive", "close")

#: What each target runs on: its HTTP parser and event loop, and the packages whose
#: versions go into the results.
STACKS: dict[str, tuple[str, tuple[str, ...]]] = {
    "rrproxy rr": ("h11, trio", ("rrproxy", "trio", "h11")),
    "rrproxy none": ("h11, trio", ("rrproxy", "trio", "h11")),
    "rrproxy rr asgi trio": ("h11, trio", ("rrproxy", "trio", "h11")),
    "rrproxy rr asgi asyncio": ("h11, asyncio", ("rrproxy", "h11")),
    "rrproxy rr asgi uvloop": ("h11, uvloop", ("rrproxy", "h11", "uvloop")),
    "rrproxy none asgi uvloop": ("h11, uvloop", ("rrproxy", "h11", "uvloop")),
    "gunicorn uvicorn-h11": ("h11, uvloop", ("gunicorn", "uvicorn-worker", "uvicorn", "h11")),
    "hypercorn trio": ("h11, trio", ("hypercorn", "trio", "h11")),
    "hypercorn asyncio": ("h11, uvloop", ("hypercorn", "uvloop", "h11")),
    "granian asgi": ("Rust (hyper), uvloop", ("granian", "uvloop")),
    "uvicorn h11 uvloop": ("h11, uvloop", ("uvicorn", "h11", "uvloop")),
    "uvicorn standard": ("httptools (llhttp), uvloop", ("uvicorn", "httptools", "uvloop")),
    "rrproxy wsgi flask trio": ("h11, trio + 4 threads", ("rrproxy", "trio", "h11", "flask")),
    "rrproxy wsgi flask uvloop": (
        "h11, uvloop + 4 threads",
        ("rrproxy", "uvloop", "h11", "flask"),
    ),
    "rrproxy none wsgi flask uvloop": (
        "h11, uvloop + 4 threads",
        ("rrproxy", "uvloop", "h11", "flask"),
    ),
    "gunicorn gthread flask": ("gunicorn's parser, 4 threads", ("gunicorn", "flask")),
    "gunicorn sync flask": ("gunicorn's parser, sync", ("gunicorn", "flask")),
    "node cluster rr": ("llhttp, libuv", ("node",)),
    "node cluster none": ("llhttp, libuv", ("node",)),
}


def versions(packages: tuple[str, ...]) -> dict[str, str]:
    import importlib.metadata

    found = {}
    for package in packages:
        if package == "node":
            try:
                found["node"] = subprocess.run(
                    ["node", "--version"], capture_output=True, text=True, timeout=10
                ).stdout.strip()
            except OSError:
                found["node"] = "missing"
            continue
        try:
            found[package] = importlib.metadata.version(package)
        except importlib.metadata.PackageNotFoundError:
            found[package] = "missing"
    return found


def available(name: str) -> str | None:
    """None if the target can run here, else why not."""
    target = TARGETS[name]
    if "binary" in target and shutil.which(target["binary"]) is None:
        return f"{target['binary']} not installed"
    if "module" in target:
        probe = subprocess.run([PY, "-c", f"import {target['module']}"], capture_output=True)
        if probe.returncode:
            return f"python module {target['module']} not installed (pip install '.[bench]')"
    return None


def _free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


def _wait_http(port: int, timeout: float = 30.0) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        try:
            with urllib.request.urlopen(f"http://127.0.0.1:{port}/", timeout=2) as response:
                if response.status == 200:
                    return
        except OSError:
            time.sleep(0.1)
    raise RuntimeError(f"nothing answered on port {port}")


def _ms(text: str) -> float:
    match = re.match(r"([\d.]+)(us|ms|s)", text)
    if not match:
        return 0.0
    value, unit = float(match.group(1)), match.group(2)
    return value / 1000 if unit == "us" else value * 1000 if unit == "s" else value


def wrk(port: int, seconds: float, close: bool, connections: int = 64) -> dict[str, Any]:
    return wrk_runner.run(f"http://127.0.0.1:{port}/", seconds, connections, close)


def run_target(name: str, mode: str, duration: float, warmup: float) -> dict[str, Any]:
    target = TARGETS[name]
    port = _free_port()
    tmp = Path(tempfile.mkdtemp(prefix="rrproxy-bench-"))
    admin = tmp / "admin.sock"
    argv = [a.format(port=port, admin=admin) for a in target["argv"]]
    env = {**os.environ, "PORT": str(port), "WORKERS": "2", **target.get("env", {})}
    proc = register(
        subprocess.Popen(
            argv,
            cwd=REPO,
            env=env,
            stdout=subprocess.DEVNULL,
            stderr=subprocess.DEVNULL,
            start_new_session=True,
        )
    )
    try:
        _wait_http(port)
        close = mode == "close"
        wrk(port, warmup, close)
        status_before = (
            AdminClient(f"unix:{admin}").json("GET", "/status") if target.get("rrproxy") else None
        )
        result = wrk(port, duration, close)
        if status_before is not None:
            after = AdminClient(f"unix:{admin}").json("GET", "/status")
            cpu = after["front"]["cpu_seconds"] - status_before["front"]["cpu_seconds"]
            handed = after["front"]["handed_total"] - status_before["front"]["handed_total"]
            result["front_cpu_s"] = round(cpu, 3)
            result["front_share_of_a_core"] = round(cpu / duration, 3)
            if handed:
                result["front_us_per_handoff"] = round(cpu / handed * 1e6, 1)
            result["worker_rss_mb"] = [
                round(w["rss_bytes"] / 2**20, 1) for w in status_before["workers"]
            ]
            result["front_rss_mb"] = round(_rss(proc.pid) / 2**20, 1)
        return result
    finally:
        stop_process_group(proc)
        shutil.rmtree(tmp, ignore_errors=True)
        time.sleep(0.5)


def _rss(pid: int) -> int:
    try:
        with open(f"/proc/{pid}/statm") as statm:
            return int(statm.read().split()[1]) * os.sysconf("SC_PAGE_SIZE")
    except OSError:
        return 0


def main(argv: list[str]) -> int:
    parser = argparse.ArgumentParser(
        prog="python -m loadtest bench",
        description=__doc__,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    parser.add_argument(
        "--targets", default=",".join(TARGETS), help=f"comma-separated, of: {', '.join(TARGETS)}"
    )
    parser.add_argument("--modes", default=",".join(MODES))
    parser.add_argument("--rounds", type=int, default=3)
    parser.add_argument("--duration", type=float, default=10.0)
    parser.add_argument("--warmup", type=float, default=2.0)
    parser.add_argument("--out", type=Path, default=None)
    args = parser.parse_args(argv)
    if shutil.which("wrk") is None:
        print("loadtest bench: needs wrk (apt-get install wrk)", file=sys.stderr)
        return 2
    names = [n.strip() for n in args.targets.split(",") if n.strip()]
    unknown = [n for n in names if n not in TARGETS]
    if unknown:
        print(f"loadtest bench: unknown targets {unknown}", file=sys.stderr)
        return 2
    skipped = {n: why for n in names if (why := available(n))}
    names = [n for n in names if n not in skipped]
    modes = [m for m in args.modes.split(",") if m in MODES]
    out = args.out or REPO / "loadtest" / "out" / ("bench-" + time.strftime("%Y%m%d-%H%M%S"))
    out.mkdir(parents=True, exist_ok=True)
    samples: dict[str, dict[str, list[dict[str, Any]]]] = {m: {n: [] for n in names} for m in modes}
    for round_index in range(args.rounds):
        for mode in modes:
            for name in names:  # alternating: A B C ... then again
                result = run_target(name, mode, args.duration, args.warmup)
                samples[mode][name].append(result)
                print(
                    f"round {round_index + 1} {mode:10} {name:24} {result['rps']:9.0f} req/s "
                    f"p50 {result['p50_ms']:.2f} ms p99 {result['p99_ms']:.2f} ms "
                    f"p99.9 {result['p999_ms']:.2f} ms",
                    flush=True,
                )
    summary = _summarize(samples)
    stacks = {
        name: {"runs_on": STACKS[name][0], "versions": versions(STACKS[name][1])} for name in names
    }
    results = {
        "command": "python -m loadtest bench " + " ".join(argv),
        "options": {k: str(v) for k, v in vars(args).items()},
        "stacks": stacks,
        "skipped": skipped,
        "samples": samples,
        "summary": summary,
        "machine": {"cpus": os.cpu_count()},
    }
    (out / "results.json").write_text(json.dumps(results, indent=1))
    (out / "bench.md").write_text(_markdown(summary, skipped, stacks))
    _chart(summary, out / "bench.png")
    print(_markdown(summary, skipped, stacks))
    print(f"results in {out}")
    return 0


def _summarize(samples: dict[str, dict[str, list[dict[str, Any]]]]) -> dict[str, Any]:
    summary: dict[str, Any] = {}
    for mode, targets in samples.items():
        rows = {}
        for name, runs in targets.items():
            rows[name] = {
                "median_rps": statistics.median(r["rps"] for r in runs),
                "p50_ms": statistics.median(r["p50_ms"] for r in runs),
                "p99_ms": statistics.median(r["p99_ms"] for r in runs),
                "p999_ms": statistics.median(r.get("p999_ms", 0.0) for r in runs),
                "mean_ms": statistics.median(r.get("mean_ms", 0.0) for r in runs),
                "errors": sum(r["errors"] for r in runs),
                **(
                    {
                        "front_us_per_handoff": statistics.median(
                            r["front_us_per_handoff"] for r in runs
                        )
                    }
                    if all("front_us_per_handoff" in r for r in runs)
                    else {}
                ),
                **(
                    {
                        "front_share_of_a_core": statistics.median(
                            r["front_share_of_a_core"] for r in runs
                        )
                    }
                    if all("front_share_of_a_core" in r for r in runs)
                    else {}
                ),
            }
        base = rows.get("rrproxy rr", {}).get("median_rps") or 0
        for row in rows.values():
            row["ratio_to_rrproxy_rr"] = round(row["median_rps"] / base, 2) if base else None
        summary[mode] = rows
    return summary


def _markdown(
    summary: dict[str, Any], skipped: dict[str, str], stacks: dict[str, Any] | None = None
) -> str:
    lines = []
    for mode, rows in summary.items():
        lines += [
            f"### {mode}",
            "",
            "| target | median req/s | mean ms | p50 ms | p99 ms | p99.9 ms | errors "
            "| ratio to rrproxy rr | front µs per handoff | front share of a core |",
            "| --- | --- | --- | --- | --- | --- | --- | --- | --- | --- |",
        ]
        for name, row in rows.items():
            lines.append(
                f"| {name} | {row['median_rps']:,.0f} | {row.get('mean_ms', 0):.2f} | "
                f"{row['p50_ms']:.2f} | {row['p99_ms']:.2f} | {row.get('p999_ms', 0):.2f} | "
                f"{row['errors']} | {row['ratio_to_rrproxy_rr']} | "
                f"{row.get('front_us_per_handoff', '')} | {row.get('front_share_of_a_core', '')} |"
            )
        lines.append("")
    if stacks:
        lines += ["| target | runs on | versions |", "| --- | --- | --- |"]
        for name, stack in stacks.items():
            pinned = ", ".join(f"{k} {v}" for k, v in stack["versions"].items())
            lines.append(f"| {name} | {stack['runs_on']} | {pinned} |")
        lines.append("")
    for name, why in skipped.items():
        lines.append(f"- {name}: skipped ({why})")
    return "\n".join(lines) + "\n"


def _chart(summary: dict[str, Any], path: Path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    modes = list(summary)
    figure, axes = plt.subplots(1, len(modes), figsize=(6 * len(modes), 4.5), squeeze=False)
    for axis, mode in zip(axes[0], modes, strict=True):
        names = list(summary[mode])
        values = [summary[mode][n]["median_rps"] for n in names]
        colors = ["tab:blue" if n.startswith("rrproxy") else "tab:gray" for n in names]
        axis.barh(names, values, color=colors)
        axis.invert_yaxis()
        axis.set_title(f"{mode}: median req/s (2 workers, wrk -c64)")
        axis.grid(axis="x", alpha=0.3)
    figure.tight_layout()
    figure.savefig(path, dpi=110)
    plt.close(figure)
