"""Reload, scaling, health and recycling through real processes under real load."""

from __future__ import annotations

import re
import signal
import threading
import time
from pathlib import Path

import pytest

from tests.helpers import PROBE, RawClient, RRProxy, get

pytestmark = pytest.mark.usefixtures("each_loop")

RELOAD_APP = """
import os
import anyio
from rrproxy import Response

VERSION = "{version}"

async def handler(request):
    await anyio.sleep(0.05)  # a handler that takes time, as real ones do
    return Response(200, f"{{VERSION}} {{os.getpid()}}", [("x-version", VERSION)])
"""


class SteadyLoad:
    """Clients that keep sending until stopped: some open a connection per request,
    some reuse keep-alive connections (reconnecting only when the server says
    Connection: close). Every failure is recorded."""

    def __init__(self, port: int, new_conn_clients: int = 2, keep_alive_clients: int = 2):
        self.port = port
        self.stop = threading.Event()
        self.lock = threading.Lock()
        self.ok = 0
        self.failures: list[str] = []
        self.pids: set[str] = set()
        self.threads = [threading.Thread(target=self._new_conn) for _ in range(new_conn_clients)]
        self.threads += [
            threading.Thread(target=self._keep_alive) for _ in range(keep_alive_clients)
        ]

    def __enter__(self) -> SteadyLoad:
        for thread in self.threads:
            thread.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self.stop.set()
        for thread in self.threads:
            thread.join(30)

    def _record(self, status: int | None, body: bytes = b"", error: str = "") -> None:
        with self.lock:
            if status == 200:
                self.ok += 1
                self.pids.add(body.split()[-1].decode() if body else "")
            else:
                self.failures.append(error or f"status {status}")

    def _new_conn(self) -> None:
        while not self.stop.is_set():
            try:
                response = get(self.port, timeout=20)
                self._record(response.status, response.body)
            except OSError as exc:
                self._record(None, error=repr(exc))
            time.sleep(0.005)

    def _keep_alive(self) -> None:
        client = None
        while not self.stop.is_set():
            try:
                if client is None:
                    client = RawClient(self.port, timeout=20)
                client.send(b"GET / HTTP/1.1\r\nHost: t\r\n\r\n")
                response = client.read_response()
                self._record(response.status, response.body)
                if response.header("connection") == "close":
                    client.close()
                    client = None
            except OSError as exc:
                self._record(None, error=f"keep-alive: {exc!r}")
                if client is not None:
                    client.close()
                client = None
            time.sleep(0.005)
        if client is not None:
            client.close()


@pytest.mark.parametrize("policy", ["rr", "none", "reuseport"])
def test_rolling_reload_under_load_loses_nothing_and_serves_new_code(tmp_path: Path, policy):
    app = tmp_path / "reload_app.py"
    app.write_text(RELOAD_APP.format(version="one"))
    with RRProxy(
        "--policy", policy, "--app-dir", str(tmp_path), "reload_app:handler", workers=2
    ) as server:
        old_pids = set(map(str, server.pids.values()))
        with SteadyLoad(server.port) as load:
            time.sleep(0.5)
            app.write_text(RELOAD_APP.format(version="two!"))  # a new size: no stale .pyc
            server.signal(signal.SIGHUP)
            server.wait_for("reload complete: 2 workers replaced", timeout=60)
            time.sleep(0.5)
        assert not load.failures, load.failures[:5]
        assert load.ok > 50
        assert "Traceback" not in server.output()
        versions = {get(server.port).header("x-version") for _ in range(6)}
        assert versions == {"two!"}
        served_by = {get(server.port).body.split()[-1].decode() for _ in range(6)}
        started = set(
            re.findall(
                r"INFO \[front pid \d+\] rrproxy.front: worker \d ready \(pid (\d+)\)",
                server.output(),
            )
        )
        assert len(started) == 2 and not (started & old_pids)
        assert served_by <= started
        if policy == "rr":  # under none the kernel may well favour one worker
            assert len(served_by) == 2


def test_reload_with_a_broken_app_keeps_the_old_workers(tmp_path: Path):
    app = tmp_path / "reload_app.py"
    app.write_text(RELOAD_APP.format(version="one"))
    with RRProxy("--app-dir", str(tmp_path), "reload_app:handler", workers=2) as server:
        old_pids = set(server.pids.values())
        app.write_text("this is not python(\n")
        server.signal(signal.SIGHUP)
        server.wait_for("reload aborted", timeout=30)
        assert re.search(r"replacement for worker 1 failed \(cannot import module", server.output())
        for _ in range(4):
            response = get(server.port)
            assert response.status == 200
            assert response.header("x-version") == "one"
            assert int(response.body.split()[-1]) in old_pids


def test_ttin_and_ttou_scale_the_workers():
    with RRProxy(PROBE, workers=2) as server:
        server.signal(signal.SIGTTIN)
        server.wait_for(r"worker 3 ready \(pid \d+\)")
        assert {get(server.port).header("x-worker-id") for _ in range(6)} == {"1", "2", "3"}
        server.signal(signal.SIGTTOU)
        server.wait_for(r"scaling down: worker 3 drains and leaves \(2 workers\)")
        server.signal(signal.SIGTTOU)  # (signals sent back to back may merge into one)
        server.wait_for(r"scaling down: worker 2 drains and leaves \(1 workers\)")
        time.sleep(0.5)
        assert {get(server.port).header("x-worker-id") for _ in range(4)} == {"1"}
        server.signal(signal.SIGTTOU)
        server.wait_for("already at 1 worker")
        assert get(server.port).status == 200


def test_a_handler_that_blocks_the_loop_gets_its_worker_replaced():
    with RRProxy("--timeout", "2", PROBE, workers=2) as server:
        blocked = RawClient(server.port)
        blocked.send(b"GET /block?s=60 HTTP/1.1\r\nHost: t\r\n\r\n")
        match = server.wait_for(
            r"worker (\d) \(pid (\d+)\) is unresponsive: it sent no heartbeat", timeout=15
        )
        slot, pid = match.group(1), match.group(2)
        server.wait_for(rf"worker {slot} ready \(pid (?!{pid}\))\d+\)", timeout=15)
        assert {get(server.port).header("x-worker-id") for _ in range(4)} == {"1", "2"}
        blocked.close()


def test_max_memory_recycles_gracefully(tmp_path: Path):
    with RRProxy("--max-memory", "150M", "tests.apps.probe:memory_handler", workers=1) as server:
        old = server.pids[1]
        with SteadyLoad(server.port, new_conn_clients=1, keep_alive_clients=1) as load:
            assert get(server.port, "/grow?mb=200").status == 200
            server.wait_for(r"recycling worker 1 \(pid \d+\): resident memory \d+ MiB above")
            server.wait_for(rf"worker 1 ready \(pid (?!{old}\))\d+\)", timeout=30)
            time.sleep(1.0)
        assert not load.failures, load.failures[:5]
        assert str(old) not in {get(server.port).body.split(b"=")[-1].strip().decode()}


def test_max_requests_recycles_without_failures():
    with RRProxy("--max-requests", "50", "--max-requests-jitter", "10", PROBE, workers=2) as server:
        with SteadyLoad(server.port) as load:
            deadline = time.monotonic() + 30
            while (
                time.monotonic() < deadline and server.output().count("asking to be replaced") < 3
            ):
                time.sleep(0.2)
        assert server.output().count("asking to be replaced") >= 3
        assert not load.failures, load.failures[:5]


def test_restart_storm_makes_rrproxy_exit():
    server = RRProxy("tests.apps.dies_soon:handler", workers=2)
    try:
        server.start()
        assert server.wait(60) == 3
        assert "no worker can stay up: workers keep dying right after they start" in server.output()
    finally:
        server.stop()
