"""`python -m loadtest memory`: memory and start-up against the number of workers.

For rrproxy (fresh interpreters, --fork-server, --preload) and its peers as their
users run them (gunicorn with uvicorn's worker, with and without --preload; uvicorn
--workers with uvloop and httptools; hypercorn), with the hello app and a FastAPI app,
at each worker count it measures:
- PSS summed over the whole process tree (from /proc/PID/smaps_rollup: shared pages
  count once in all), the root process's PSS, and PSS per worker (the rest / N);
- RSS summed (shared pages counted in every process: what `ps` users add up);
- the time from start to the first 200;
- the time for a full rolling reload (SIGHUP), where the server has one.

Results go to OUT/results.json and OUT/memory.png. One server at a time; nothing else
should run on the machine meanwhile.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import signal
import socket
import subprocess
import sys
import tempfile
import time
import urllib.request
from pathlib import Path
from typing import Any

from .processes import register, stop_process_group

REPO = Path(__file__).resolve().parent.parent
PY = sys.executable
APPS = {"hello": "workers.asgi_hello:app", "fastapi": "workers.fastapi_app:app"}


def _rrproxy(*extra: str) -> list[str]:
    return [PY, "-m", "rrproxy", "--port", "{port}", "-w", "{workers}",
            "--admin", "unix:{admin}", "--log-level", "warning", *extra, "{app}"]  # fmt: skip


def _gunicorn(*extra: str) -> list[str]:
    return [PY, "-m", "gunicorn", "-w", "{workers}", "-k", "uvicorn_worker.UvicornWorker",
            "-b", "127.0.0.1:{port}", "--log-level", "warning", *extra, "{app}"]  # fmt: skip


TARGETS: dict[str, list[str]] = {
    "rrproxy": _rrproxy(),
    "rrproxy --fork-server": _rrproxy("--fork-server"),
    "rrproxy --preload": _rrproxy("--preload"),
    "gunicorn + UvicornWorker": _gunicorn(),
    "gunicorn + UvicornWorker --preload": _gunicorn("--preload"),
    "uvicorn --workers": [
        PY,
        "-m",
        "uvicorn",
        "--workers",
        "{workers}",
        "--port",
        "{port}",
        "--log-level",
        "warning",
        "{app}",
    ],
    "hypercorn -w": [
        PY,
        "-m",
        "hypercorn",
        "-w",
        "{workers}",
        "-b",
        "127.0.0.1:{port}",
        "{app}",
    ],
}


def _free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


def _children(pid: int) -> list[int]:
    """Children of every thread of pid (a child belongs to the thread that forked it:
    trio starts processes from a worker thread)."""
    found: list[int] = []
    try:
        tasks = os.listdir(f"/proc/{pid}/task")
    except OSError:
        return found
    for task in tasks:
        try:
            with open(f"/proc/{pid}/task/{task}/children") as children:
                found.extend(int(p) for p in children.read().split())
        except OSError:
            continue
    return found


def tree(pid: int) -> list[int]:
    """pid and all its descendants."""
    out, todo = [], [pid]
    while todo:
        current = todo.pop()
        out.append(current)
        todo.extend(_children(current))
    return out


def _rollup(pid: int) -> dict[str, int]:
    values: dict[str, int] = {}
    try:
        with open(f"/proc/{pid}/smaps_rollup") as rollup:
            for line in rollup:
                parts = line.split()
                if len(parts) >= 2 and parts[0] in ("Rss:", "Pss:"):
                    values[parts[0][:-1]] = int(parts[1]) * 1024
    except OSError:
        pass
    return values


def _get(port: int, timeout: float = 2.0) -> int:
    with urllib.request.urlopen(f"http://127.0.0.1:{port}/", timeout=timeout) as response:
        response.read()
        return int(response.status)


def _wait_http(port: int, timeout: float) -> float:
    started = time.monotonic()
    while time.monotonic() - started < timeout:
        try:
            if _get(port) == 200:
                return time.monotonic() - started
        except OSError:
            time.sleep(0.01)
    raise RuntimeError(f"nothing answered on port {port} within {timeout} s")


def _worker_pids(root: int) -> set[int]:
    return set(tree(root)) - {root}


def _reload(
    name: str,
    proc: subprocess.Popen,  # type: ignore[type-arg]
    port: int,
    admin: Path,
    workers: int,
    timeout: float,
) -> float | None:
    """Seconds for a full rolling reload, or None where the server has none."""
    if name.startswith("hypercorn"):
        return None  # hypercorn has no reload of its workers
    before = _worker_pids(proc.pid)
    helpers = max(0, len(before) - workers)
    started = time.monotonic()
    if name.startswith("rrproxy"):
        subprocess.run([PY, "-m", "rrproxy", "reload", "--admin", f"unix:{admin}"],
                       check=True, capture_output=True, timeout=timeout, cwd=REPO)  # fmt: skip
        return round(time.monotonic() - started, 3)
    os.kill(proc.pid, signal.SIGHUP)
    while time.monotonic() - started < timeout:
        # Done when as many new processes as workers run and it answers (a helper that
        # never restarts, such as multiprocessing's resource tracker, is not waited for).
        if len(_worker_pids(proc.pid) - before) >= len(before) - helpers:
            try:
                if _get(port) == 200:
                    return round(time.monotonic() - started, 3)
            except OSError:
                pass
        time.sleep(0.02)
    return None


def measure(name: str, app: str, workers: int, timeout: float = 90.0) -> dict[str, Any]:
    port = _free_port()
    tmp = Path(tempfile.mkdtemp(prefix="rrproxy-memory-"))
    admin = tmp / "admin.sock"
    argv = [a.format(port=port, workers=workers, admin=admin, app=APPS[app]) for a in TARGETS[name]]
    proc = register(
        subprocess.Popen(
            argv,
            cwd=REPO,
            stdout=subprocess.DEVNULL,
            stderr=subprocess.DEVNULL,
            start_new_session=True,
        )
    )
    result: dict[str, Any] = {"target": name, "app": app, "workers": workers}
    try:
        result["ready_s"] = round(_wait_http(port, timeout), 3)
        # Every worker up (not only the first to answer), then some traffic.
        deadline = time.monotonic() + timeout
        while len(_worker_pids(proc.pid)) < workers and time.monotonic() < deadline:
            time.sleep(0.05)
        for _ in range(20 * workers):
            _get(port)
        time.sleep(1.0)
        pids = tree(proc.pid)
        rollups = {pid: _rollup(pid) for pid in pids}
        total_pss = sum(r.get("Pss", 0) for r in rollups.values())
        root_pss = rollups[proc.pid].get("Pss", 0)
        result.update(
            processes=len(pids),
            pss_total_mib=round(total_pss / 2**20, 1),
            pss_root_mib=round(root_pss / 2**20, 1),
            pss_per_worker_mib=round((total_pss - root_pss) / workers / 2**20, 1),
            rss_total_mib=round(sum(r.get("Rss", 0) for r in rollups.values()) / 2**20, 1),
        )
        result["reload_s"] = _reload(name, proc, port, admin, workers, 30.0)
    except (RuntimeError, OSError, subprocess.SubprocessError) as exc:
        result["error"] = str(exc)
    finally:
        stop_process_group(proc)
        time.sleep(0.3)
    return result


def chart(results: list[dict[str, Any]], path: Path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    apps = sorted({r["app"] for r in results}, key=list(APPS).index)
    figure, axes = plt.subplots(1, len(apps), figsize=(6.5 * len(apps), 4.5), squeeze=False)
    for axis, app in zip(axes[0], apps, strict=True):
        for target in TARGETS:
            rows = [
                r
                for r in results
                if r["app"] == app and r["target"] == target and "pss_total_mib" in r
            ]
            if rows:
                style = "-" if target.startswith("rrproxy") else "--"
                axis.plot([r["workers"] for r in rows], [r["pss_total_mib"] for r in rows],
                          style, marker="o", label=target)  # fmt: skip
        axis.set_title(f"{app}: total PSS against workers")
        axis.set_xlabel("workers")
        axis.set_ylabel("MiB (PSS, whole process tree)")
        axis.grid(alpha=0.3)
        axis.legend(fontsize=8)
    figure.tight_layout()
    figure.savefig(path, dpi=110)


def table(results: list[dict[str, Any]]) -> str:
    lines = [
        "| app | target | workers | PSS total | root | per worker | RSS total | ready | reload |",
        "| --- | --- | ---: | ---: | ---: | ---: | ---: | ---: | ---: |",
    ]
    for r in results:
        if "error" in r:
            lines.append(
                f"| {r['app']} | {r['target']} | {r['workers']} | error: {r['error']} |||||"
            )
            continue
        reload = "-" if r.get("reload_s") is None else f"{r['reload_s']:.2f} s"
        lines.append(
            f"| {r['app']} | {r['target']} | {r['workers']} | {r['pss_total_mib']} MiB | "
            f"{r['pss_root_mib']} | {r['pss_per_worker_mib']} | {r['rss_total_mib']} MiB | "
            f"{r['ready_s']:.2f} s | {reload} |"
        )
    return "\n".join(lines)


def main(argv: list[str]) -> int:
    parser = argparse.ArgumentParser(
        prog="python -m loadtest memory", description=__doc__.split("\n")[0]
    )
    parser.add_argument("--workers", default="1,2,4,8,16")
    parser.add_argument("--apps", default=",".join(APPS))
    parser.add_argument("--targets", default=",".join(TARGETS))
    parser.add_argument("--out", type=Path, default=REPO / "loadtest" / "out" / "memory")
    args = parser.parse_args(argv)
    counts = [int(n) for n in args.workers.split(",")]
    apps = [a for a in args.apps.split(",") if a]
    targets = [t for t in args.targets.split(",") if t]
    for name in targets:
        if name not in TARGETS:
            parser.error(f"unknown target {name!r}: {', '.join(TARGETS)}")
    args.out.mkdir(parents=True, exist_ok=True)
    results = []
    for app in apps:
        for name in targets:
            for count in counts:
                result = measure(name, app, count)
                print(json.dumps(result), flush=True)
                results.append(result)
    meta = {
        "command": "python -m loadtest memory " + " ".join(argv),
        "python": platform.python_version(),
        "cpus": os.cpu_count(),
        "date": time.strftime("%Y-%m-%d %H:%M"),
    }
    (args.out / "results.json").write_text(json.dumps({"meta": meta, "results": results}, indent=1))
    chart(results, args.out / "memory.png")
    (args.out / "table.md").write_text(table(results) + "\n")
    print(table(results))
    return 0
