"""`python -m loadtest faults`: what a fault costs under load, per policy.

For each policy and mode (keep-alive, Connection: close), rrproxy runs the app with
4 workers under `wrk -t1 -c64` and, part-way through, either gets SIGHUP (a rolling
reload, which must lose nothing) or has one worker SIGKILLed (which loses what that
worker was serving, and under reuseport its accept queue). The default app takes
50 ms per request, as real handlers do: an instant handler hides in-flight losses.
"""

from __future__ import annotations

import argparse
import datetime
import json
import os
import shutil
import signal
import subprocess
import sys
import tempfile
import threading
import time
from pathlib import Path
from typing import Any

from rrproxy.config import POLICIES
from rrproxy.control import AdminClient

from .bench import _free_port, _wait_http, wrk
from .processes import register, stop_process_group
from .server import REPO

FAULTS = ("reload", "kill")
MODES = ("keep-alive", "close")


def run_one(policy: str, mode: str, fault: str, app: str, duration: float, at: float) -> dict:
    port = _free_port()
    tmp = Path(tempfile.mkdtemp(prefix="rrproxy-faults-"))
    admin_path = tmp / "admin.sock"
    argv = [
        sys.executable,
        "-m",
        "rrproxy",
        "--port",
        str(port),
        "--workers",
        "4",
        "--policy",
        policy,
        "--log-level",
        "warning",
        "--admin",
        f"unix:{admin_path}",
        app,
    ]
    proc = register(
        subprocess.Popen(
            argv,
            cwd=REPO,
            stdout=subprocess.DEVNULL,
            stderr=subprocess.DEVNULL,
            start_new_session=True,
        )
    )
    try:
        _wait_http(port)
        admin = AdminClient(f"unix:{admin_path}")
        before = {w["pid"] for w in admin.json("GET", "/status")["workers"]}
        result: dict[str, Any] = {}
        load = threading.Thread(
            target=lambda: result.update(wrk(port, duration, mode == "close")), daemon=True
        )
        load.start()
        time.sleep(at)
        if fault == "reload":
            os.kill(proc.pid, signal.SIGHUP)
        else:
            os.kill(sorted(before)[0], signal.SIGKILL)
        load.join(duration + 60)
        after = {w["pid"] for w in admin.json("GET", "/status")["workers"]}
        return {
            "policy": policy,
            "mode": mode,
            "fault": fault,
            "requests": result.get("requests", 0),
            "failed": result.get("errors", 0),
            "rps": result.get("rps", 0.0),
            "workers_replaced": len(before - after),
            "front_alive": proc.poll() is None,
        }
    finally:
        stop_process_group(proc)
        shutil.rmtree(tmp, ignore_errors=True)


def markdown(runs: list[dict]) -> str:
    lines = [
        "| policy | fault | keep-alive: sent / failed | `Connection: close`: sent / failed |",
        "| --- | --- | --- | --- |",
    ]
    keyed = {(r["policy"], r["fault"], r["mode"]): r for r in runs}
    for policy in dict.fromkeys(r["policy"] for r in runs):
        for fault in dict.fromkeys(r["fault"] for r in runs):
            cells = []
            for mode in MODES:
                run = keyed.get((policy, fault, mode))
                cells.append(f"{run['requests']:,} / {run['failed']}" if run else "-")
            lines.append(f"| `{policy}` | {fault} | {cells[0]} | {cells[1]} |")
    return "\n".join(lines) + "\n"


def main(argv: list[str]) -> int:
    p = argparse.ArgumentParser(prog="python -m loadtest faults", description=__doc__)
    p.add_argument("--policies", default=",".join(POLICIES))
    p.add_argument("--faults", default=",".join(FAULTS))
    p.add_argument("--modes", default=",".join(MODES))
    p.add_argument("--app", default="workers.slow_io:handler")
    p.add_argument("--duration", type=float, default=12.0)
    p.add_argument("--at", type=float, default=3.0, help="seconds into the load")
    p.add_argument("--out", type=Path, default=None)
    args = p.parse_args(argv)
    if shutil.which("wrk") is None:
        print("loadtest faults: needs wrk (apt-get install wrk)", file=sys.stderr)
        return 2
    runs = []
    for fault in args.faults.split(","):
        for policy in args.policies.split(","):
            for mode in args.modes.split(","):
                run = run_one(policy, mode, fault, args.app, args.duration, args.at)
                print(json.dumps(run), flush=True)
                runs.append(run)
    stamp = datetime.datetime.now().strftime("%Y%m%d-%H%M%S")
    out = args.out or Path(__file__).resolve().parent / "out" / f"faults-{stamp}"
    out.mkdir(parents=True, exist_ok=True)
    command = "python -m loadtest faults " + " ".join(argv)
    (out / "results.json").write_text(json.dumps({"command": command, "runs": runs}, indent=1))
    (out / "report.md").write_text(markdown(runs))
    print(markdown(runs))
    print(f"results in {out}")
    return 0
