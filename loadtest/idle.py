"""`python -m loadtest idle`: hold many idle keep-alive connections and check that a
separate client is still served promptly; report the memory each held connection costs.

    python -m loadtest idle --connections 10000 --workers 2
"""

from __future__ import annotations

import argparse
import json
import os
import resource
import statistics
import sys
import tempfile
import time
from pathlib import Path

import trio

from .server import ServerUnderTest


async def _hold(port: int, count: int, holders: list[trio.socket.SocketType]) -> None:
    request = b"GET / HTTP/1.1\r\nHost: idle\r\n\r\n"

    async def one() -> None:
        sock = trio.socket.socket()
        await sock.connect(("127.0.0.1", port))
        await sock.send(request)
        data = b""
        while b"\r\n\r\n" not in data:
            chunk = await sock.recv(4096)
            if not chunk:
                raise ConnectionError("closed while opening the idle connections")
            data += chunk
        holders.append(sock)

    limiter = trio.CapacityLimiter(200)

    async def limited() -> None:
        async with limiter:
            await one()

    async with trio.open_nursery() as nursery:
        for _ in range(count):
            nursery.start_soon(limited)


async def _probe(port: int, requests: int) -> list[float]:
    latencies = []
    for _ in range(requests):
        started = time.perf_counter()
        sock = trio.socket.socket()
        await sock.connect(("127.0.0.1", port))
        await sock.send(b"GET / HTTP/1.1\r\nHost: probe\r\nConnection: close\r\n\r\n")
        while await sock.recv(65536):
            pass
        sock.close()
        latencies.append((time.perf_counter() - started) * 1000)
    return latencies


def main(argv: list[str]) -> int:
    parser = argparse.ArgumentParser(
        prog="python -m loadtest idle",
        description=__doc__,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    parser.add_argument("--connections", type=int, default=10000)
    parser.add_argument("--workers", type=int, default=2)
    parser.add_argument("--policy", default="rr")
    parser.add_argument("--probe-requests", type=int, default=300)
    parser.add_argument("--out", type=Path, default=None)
    args = parser.parse_args(argv)
    _soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    needed = args.connections + 1000
    if hard < needed:
        print(
            f"loadtest idle: needs {needed} open files, the hard limit is {hard}", file=sys.stderr
        )
        return 2
    resource.setrlimit(resource.RLIMIT_NOFILE, (hard, hard))
    admin = Path(tempfile.mkdtemp(prefix="rrproxy-idle-")) / "admin.sock"
    server = ServerUnderTest(
        "workers.hello:handler",
        args.policy,
        args.workers,
        admin,
        ("--keep-alive", "600", "--max-connections", str(args.connections + 1000)),
    )
    server.start()
    holders: list[trio.socket.SocketType] = []
    try:
        before = server.status()
        baseline = trio.run(_probe, server.port, args.probe_requests)
        started = time.perf_counter()
        trio.run(_hold, server.port, args.connections, holders)
        opened_in = time.perf_counter() - started
        time.sleep(1.5)  # let the workers report
        held = server.status()
        loaded = trio.run(_probe, server.port, args.probe_requests)
    finally:
        for sock in holders:
            os.close(sock.detach())  # outside trio.run: no trio close
        server.stop()
    rss_before = sum(w["rss_bytes"] for w in before["workers"])
    rss_held = sum(w["rss_bytes"] for w in held["workers"])

    def pct(values: list[float], q: float) -> float:
        ordered = sorted(values)
        return round(ordered[min(len(ordered) - 1, int(len(ordered) * q))], 2)

    result = {
        "connections": args.connections,
        "workers": args.workers,
        "opened_in_s": round(opened_in, 2),
        "connections_active_per_worker": [w["connections_active"] for w in held["workers"]],
        "worker_rss_mb_before": [round(w["rss_bytes"] / 2**20, 1) for w in before["workers"]],
        "worker_rss_mb_held": [round(w["rss_bytes"] / 2**20, 1) for w in held["workers"]],
        "bytes_per_held_connection": round((rss_held - rss_before) / args.connections),
        "probe_idle_ms": {"p50": round(statistics.median(baseline), 2), "p99": pct(baseline, 0.99)},
        "probe_with_held_ms": {
            "p50": round(statistics.median(loaded), 2),
            "p99": pct(loaded, 0.99),
        },
    }
    text = json.dumps(result, indent=1)
    print(text)
    if args.out:
        args.out.mkdir(parents=True, exist_ok=True)
        (args.out / "idle.json").write_text(text)
    return 0
