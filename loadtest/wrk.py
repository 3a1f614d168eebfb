"""Running wrk and reading its results from its own Lua `done()` summary (exact
counts, HDR percentiles and the mean), instead of scraping its text."""

from __future__ import annotations

import json
import shutil
import subprocess
import tempfile
from pathlib import Path
from typing import Any

from .processes import track

DONE = r"""
done = function(summary, latency, requests)
  local e = summary.errors
  io.write(string.format(
    'RRPROXY_WRK {"requests":%d,"duration_us":%d,"mean_us":%.1f,"stdev_us":%.1f,' ..
    '"max_us":%d,"p50_us":%d,"p90_us":%d,"p99_us":%d,"p999_us":%d,' ..
    '"connect":%d,"read":%d,"write":%d,"status":%d,"timeout":%d}\n',
    summary.requests, summary.duration, latency.mean, latency.stdev, latency.max,
    latency:percentile(50), latency:percentile(90), latency:percentile(99),
    latency:percentile(99.9), e.connect, e.read, e.write, e.status, e.timeout))
end
"""


def available() -> bool:
    return shutil.which("wrk") is not None


def run(
    url: str,
    seconds: float,
    connections: int = 64,
    close: bool = False,
    script: str = "",
) -> dict[str, Any]:
    """One wrk run (-t1); requests, req/s, latency in ms (mean, p50, p90, p99, p99.9,
    max) and errors by kind."""
    with tempfile.TemporaryDirectory(prefix="rrproxy-wrk-") as tmp:
        lua = Path(tmp) / "run.lua"
        lua.write_text(script + DONE)
        argv = ["wrk", "-t1", f"-c{connections}", f"-d{max(1, int(seconds))}s", "-s", str(lua)]
        if close:
            argv += ["-H", "Connection: close"]
        proc = subprocess.Popen([*argv, url], stdout=subprocess.PIPE, text=True)
        with track(proc):
            output, _ = proc.communicate(timeout=seconds + 60)
    line = next((x for x in output.splitlines() if x.startswith("RRPROXY_WRK ")), None)
    if line is None:
        raise RuntimeError(f"wrk printed no summary:\n{output}")
    data = json.loads(line.split(" ", 1)[1])
    seconds_run = data["duration_us"] / 1e6 or 1.0
    errors = {k: data[k] for k in ("connect", "read", "write", "status", "timeout") if data[k]}
    return {
        "requests": data["requests"],
        "rps": round(data["requests"] / seconds_run, 1),
        "mean_ms": data["mean_us"] / 1000,
        "p50_ms": data["p50_us"] / 1000,
        "p90_ms": data["p90_us"] / 1000,
        "p99_ms": data["p99_us"] / 1000,
        "p999_ms": data["p999_us"] / 1000,
        "max_ms": data["max_us"] / 1000,
        "errors_by_kind": errors,
        "errors": sum(errors.values()),
    }
