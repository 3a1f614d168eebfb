"""--fork-server and --preload: workers forked from a zygote, through real processes,
signals and clients."""

from __future__ import annotations

import os
import signal
import threading
import time
from pathlib import Path

import pytest

from tests.helpers import RRProxy, get, wait_until, worker_pids

APP = """\
import os, random
VERSION = {version!r}
with open({log!r}, "a") as log:
    log.write(f"{{os.getpid()}}\\n")
{extra}

async def handler(request):
    return {{"version": VERSION, "pid": os.getpid(), "random": random.random()}}
"""


def _write_app(tmp_path: Path, version: str, extra: str = "") -> Path:
    log = tmp_path / "imports.log"
    (tmp_path / "forkapp.py").write_text(APP.format(version=version, log=str(log), extra=extra))
    return log


def _parent(pid: int) -> int:
    with open(f"/proc/{pid}/stat") as stat:
        return int(stat.read().rsplit(")", 1)[1].split()[1])


def _fd_targets(pid: int) -> set[str]:
    """What a process's fds above stdio point at ('pipe:[123]', 'socket:[456]')."""
    targets = set()
    for name in os.listdir(f"/proc/{pid}/fd"):
        if int(name) > 2:
            try:
                targets.add(os.readlink(f"/proc/{pid}/fd/{name}"))
            except FileNotFoundError:
                pass
    return {target for target in targets if target.startswith(("pipe:", "socket:"))}


def _json(port: int) -> dict:
    import json

    return json.loads(get(port).body)


class Load:
    """Requests in a loop; counts the ones that did not get a 200."""

    def __init__(self, port: int) -> None:
        self.port, self.ok, self.failed = port, 0, 0
        self.stop = threading.Event()
        self.thread = threading.Thread(target=self._run, daemon=True)

    def _run(self) -> None:
        while not self.stop.is_set():
            try:
                answer = get(self.port, timeout=10)
                if answer.status == 200:
                    self.ok += 1
                else:
                    self.failed += 1
            except OSError:
                self.failed += 1

    def __enter__(self) -> Load:
        self.thread.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self.stop.set()
        self.thread.join(15)


@pytest.mark.timeout(90)
def test_forked_workers_restart_reload_and_stop(tmp_path: Path):
    _write_app(tmp_path, "1")
    args = ("--fork-server", "--app-dir", str(tmp_path), "forkapp:handler")
    with RRProxy(*args, workers=3) as server:
        zygote = _parent(server.pids[1])
        assert zygote != server.proc.pid and _parent(zygote) == server.proc.pid
        assert all(_parent(pid) == zygote for pid in server.pids.values())
        assert worker_pids(server.proc.pid) == set(server.pids.values())
        # A worker holds none of the zygote's own pipes and sockets (its wakeup pipe,
        # its socket to the front): beyond stdio, nothing open in both.
        assert not _fd_targets(zygote) & _fd_targets(server.pids[1])
        # A killed worker comes back, forked again.
        victim = server.pids[2]
        os.kill(victim, signal.SIGKILL)
        match = server.wait_for(rf"worker 2 ready \(pid (?!{victim})(\d+)", timeout=20)
        assert _parent(int(match.group(1))) == zygote
        assert "signal SIGKILL" in server.output() or "SIGKILL" in server.output()
        # A rolling reload under load loses nothing.
        before = worker_pids(server.proc.pid)
        with Load(server.port) as load:
            time.sleep(0.3)
            server.signal(signal.SIGHUP)
            server.wait_for("reload complete", timeout=40)
            time.sleep(0.3)
        assert load.failed == 0 and load.ok > 0
        after = worker_pids(server.proc.pid)
        assert len(after) == 3 and not (after & before)
        server.signal(signal.SIGTERM)
        assert server.wait(30) == 0
    # Nothing is left behind: not the zygote, not a worker.
    wait_until(lambda: not os.path.exists(f"/proc/{zygote}"), 10, what="the zygote gone")


@pytest.mark.timeout(90)
def test_a_dead_fork_server_leaves_spawning_to_fresh_interpreters(tmp_path: Path):
    _write_app(tmp_path, "1")
    args = ("--fork-server", "--app-dir", str(tmp_path), "forkapp:handler")
    with RRProxy(*args, workers=2) as server:
        zygote = _parent(server.pids[1])
        os.kill(zygote, signal.SIGKILL)
        server.wait_for("fork server .* is gone", timeout=10)
        # Its workers keep serving, and are still watched: a killed one is replaced.
        assert get(server.port).status == 200
        victim = server.pids[1]
        os.kill(victim, signal.SIGKILL)
        match = server.wait_for(rf"worker 1 ready \(pid (?!{victim})(\d+)", timeout=20)
        assert _parent(int(match.group(1))) == server.proc.pid  # a fresh interpreter
        for _ in range(4):
            assert get(server.port).status == 200
        server.signal(signal.SIGTERM)
        assert server.wait(30) == 0


@pytest.mark.timeout(90)
def test_preload_imports_once_reseeds_random_and_reload_imports_new_code(tmp_path: Path):
    log = _write_app(tmp_path, "1")
    args = ("--preload", "--app-dir", str(tmp_path), "forkapp:handler")
    with RRProxy(*args, workers=3) as server:
        zygote = _parent(server.pids[1])
        # Imported once, in the zygote; the workers share it.
        assert log.read_text().split() == [str(zygote)]
        answers = [_json(server.port) for _ in range(6)]
        assert {a["version"] for a in answers} == {"1"}
        by_pid = {a["pid"]: a["random"] for a in answers}
        assert len(by_pid) == 3
        # Each child reseeded random: three workers, three different streams.
        assert len(set(by_pid.values())) == 3
        _write_app(tmp_path, "2")
        server.signal(signal.SIGHUP)
        server.wait_for("reload complete", timeout=40)
        assert {_json(server.port)["version"] for _ in range(6)} == {"2"}
        imports = log.read_text().split()
        assert len(imports) == 2 and imports[0] == str(zygote)
        new_zygote = int(imports[1])
        assert all(_parent(pid) == new_zygote for pid in worker_pids(server.proc.pid))
        # The old zygote left once its last worker had drained.
        wait_until(lambda: not os.path.exists(f"/proc/{zygote}"), 20, what="old zygote gone")


def test_preload_that_fails_exits_2_at_boot(tmp_path: Path):
    _write_app(tmp_path, "1", extra="raise RuntimeError('no database')")
    server = RRProxy("--preload", "--app-dir", str(tmp_path), "forkapp:handler", workers=2)
    server.start_without_waiting()
    assert server.wait(30) == 2
    assert "no database" in server.output()


@pytest.mark.timeout(90)
def test_preload_that_fails_on_reload_keeps_the_old_workers(tmp_path: Path):
    _write_app(tmp_path, "1")
    args = ("--preload", "--app-dir", str(tmp_path), "forkapp:handler")
    with RRProxy(*args, workers=2) as server:
        before = worker_pids(server.proc.pid)
        _write_app(tmp_path, "2", extra="raise RuntimeError('broken deploy')")
        server.signal(signal.SIGHUP)
        server.wait_for("reload aborted", timeout=30)
        assert "broken deploy" in server.output()
        assert worker_pids(server.proc.pid) == before
        assert {_json(server.port)["version"] for _ in range(4)} == {"1"}


@pytest.mark.timeout(60)
def test_ready_strategy_first_serves_before_slow_workers_are_up(tmp_path: Path):
    slow = "import time, rrproxy.cluster\nif rrproxy.cluster.worker_id != 1:\n    time.sleep(6)"
    _write_app(tmp_path, "1", extra=slow)
    args = ("--ready-strategy", "first", "--app-dir", str(tmp_path), "forkapp:handler")
    started = time.monotonic()
    with RRProxy(*args, workers=3) as server:
        assert time.monotonic() - started < 5
        assert "worker 1 ready" in server.output()
        assert _json(server.port)["version"] == "1"
        wait_until(lambda: len(worker_pids(server.proc.pid)) == 3, 20, what="all three")
