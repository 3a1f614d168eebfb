"""The front never dies because of a worker, user code, a client or an operator: each
fault is injected the way it happens for real (real processes, signals, user code
writing to its own channel), and the front must still serve afterwards."""

from __future__ import annotations

import json
import os
import signal
import socket
import time
from pathlib import Path

import pytest

from rrproxy.control import AdminClient
from tests.helpers import (
    RawClient,
    RRProxy,
    client_per_worker,
    get,
    open_fds,
    rss_bytes,
    run_cli,
    wait_until,
    worker_pids,
)

FAULTY = "tests.apps.faulty:handler"


def _admin(tmp_path: Path) -> tuple[str, str]:
    return ("--admin", f"unix:{tmp_path / 'admin.sock'}")


def _status(tmp_path: Path) -> dict:
    return AdminClient(f"unix:{tmp_path / 'admin.sock'}").json("GET", "/status")


def _serving(port: int) -> bool:
    try:
        return get(port, timeout=5).status == 200
    except OSError:
        return False


@pytest.mark.parametrize("policy", ["rr", "none"])
def test_worker_killed_with_messages_queued_for_it(tmp_path: Path, policy: str):
    """Worker 1 sends 300 KB of cluster messages to worker 2, whose loop is blocked
    (so it reads none of them); --timeout then kills worker 2 while the front still
    has them queued. The front used to crash flushing to the dead channel."""
    args = ("--policy", policy, "--timeout", "2", *_admin(tmp_path), FAULTY)
    with RRProxy(*args, workers=2) as server:
        clients = client_per_worker(server.port, 2)
        clients[2].send(b"GET /block?s=8 HTTP/1.1\r\nHost: t\r\n\r\n")
        time.sleep(0.3)
        clients[1].send(b"GET /flood?to=2&n=5&kb=60 HTTP/1.1\r\nHost: t\r\n\r\n")
        wait_until(lambda: "is unresponsive" in server.output(), 15, what="the kill")
        time.sleep(1.0)
        assert server.proc.poll() is None, server.output()
        wait_until(lambda: _serving(server.port), 10, what="serving again")
        wait_until(lambda: len(_status(tmp_path)["workers"]) == 2, 10)
        assert "Traceback" not in server.output()
        for client in clients.values():
            client.close()


def test_sigterm_during_a_broadcast_flood_stops_cleanly(tmp_path: Path):
    with RRProxy(*_admin(tmp_path), FAULTY, workers=2) as server:
        clients = client_per_worker(server.port, 2)
        clients[2].send(b"GET /block?s=3 HTTP/1.1\r\nHost: t\r\n\r\n")
        clients[1].send(b"GET /flood?to=all&n=20&kb=60 HTTP/1.1\r\nHost: t\r\n\r\n")
        time.sleep(0.5)
        server.signal(signal.SIGTERM)
        assert server.wait(20) == 0, server.output()
        assert "Traceback" not in server.output()


def test_one_slot_killed_again_and_again_does_not_stop_the_server(tmp_path: Path):
    """Slot 1 is SIGKILLed every 0.3 s, often before it is even ready; slot 2 is
    healthy. The old global storm rule exited 3 after ~11 s."""
    with RRProxy("--policy", "none", *_admin(tmp_path), FAULTY, workers=2) as server:
        deadline = time.monotonic() + 14
        kills = 0
        while time.monotonic() < deadline:
            pid = _status(tmp_path)["workers"][0]["pid"]
            if pid:
                try:
                    os.kill(pid, signal.SIGKILL)
                    kills += 1
                except ProcessLookupError:
                    pass
            assert server.proc.poll() is None, server.output()
            time.sleep(0.3)
        assert kills >= 6  # the slot backs off: 0.1 s doubling
        assert _serving(server.port)
        slots = {w["id"]: w for w in _status(tmp_path)["workers"]}
        assert slots[1]["restarts"] >= 6
        assert slots[2]["restarts"] == 0


def test_a_request_that_crashes_its_worker_cannot_stop_the_server(tmp_path: Path):
    """A client crashes a worker twice a second for 15 s (a fault in user code any
    client can trigger); healthy requests keep being served, the front stays up."""
    with RRProxy(*_admin(tmp_path), FAULTY, workers=4) as server:
        deadline = time.monotonic() + 15
        crashes = healthy = 0
        while time.monotonic() < deadline:
            try:
                get(server.port, "/exit", timeout=5)
            except (OSError, ConnectionError):
                crashes += 1
            if _serving(server.port):
                healthy += 1
            assert server.proc.poll() is None, server.output()
            time.sleep(0.5)
        assert crashes >= 15 and healthy >= 15
        assert server.proc.poll() is None
        assert "no worker can stay up" not in server.output()


def test_every_slot_crash_looping_after_broken_code_exits_3(tmp_path: Path):
    app = tmp_path / "deploy.py"
    app.write_text("async def handler(request):\n    return 'v1'\n")
    with RRProxy("--app-dir", str(tmp_path), *_admin(tmp_path), "deploy:handler") as server:
        app.write_text("async def handler(request):\n    return 'v2' +\n")  # syntax error
        for pid in worker_pids(server.proc.pid):
            os.kill(pid, signal.SIGKILL)
        assert server.wait(60) == 3
        assert "no worker can stay up" in server.output()
        assert "SyntaxError" in server.output()


def test_a_slot_that_cannot_start_is_reported_while_the_others_serve(tmp_path: Path):
    broken = tmp_path / "broken-slots"
    env = {"FAULTY_BROKEN_SLOTS_FILE": str(broken)}
    with RRProxy(*_admin(tmp_path), "--policy", "none", FAULTY, workers=2, env=env) as server:
        broken.write_text("1")
        os.kill(server.pids[1], signal.SIGKILL)
        wait_until(
            lambda: _status(tmp_path)["workers"][0].get("crash_looping"),
            30,
            what="slot 1 reported crash-looping",
        )
        assert "worker 1 cannot stay up" in server.output()
        assert _serving(server.port)
        metrics = AdminClient(f"unix:{tmp_path / 'admin.sock'}").request("GET", "/metrics")[1]
        assert b'rrproxy_worker_crash_looping{worker="1"} 1.0' in metrics
        broken.write_text("")
        wait_until(lambda: _status(tmp_path)["workers"][0]["state"] == "ready", 30, what="recovery")
        assert server.proc.poll() is None


def test_sigkill_of_the_old_worker_during_its_replacement_leaves_no_ghost(tmp_path: Path):
    with RRProxy(*_admin(tmp_path), FAULTY, workers=2) as server:
        front = server.proc.pid
        for _ in range(3):
            old = _status(tmp_path)["workers"][0]["pid"]
            server.signal(signal.SIGHUP)
            time.sleep(0.05)
            try:
                os.kill(old, signal.SIGKILL)
            except ProcessLookupError:
                pass  # replaced and drained already (a forked replacement is that quick)
            wait_until(lambda: not _status(tmp_path)["reloading"], 30, what="the reload")
            time.sleep(1.5)  # a death restarts after its backoff
            wait_until(lambda: len(worker_pids(front)) == 2, 20, what="2 workers")
            status = _status(tmp_path)
            assert {w["pid"] for w in status["workers"]} == worker_pids(front)
            assert all(w["processes"] == 1 for w in status["workers"])


def test_reload_then_scale_down_at_once_leaves_no_ghost(tmp_path: Path):
    with RRProxy("--reload-batch", "2", *_admin(tmp_path), FAULTY, workers=2) as server:
        front = server.proc.pid
        server.signal(signal.SIGHUP)
        server.signal(signal.SIGTTOU)
        wait_until(lambda: len(_status(tmp_path)["workers"]) == 1, 30, what="1 slot")
        wait_until(lambda: len(worker_pids(front)) == 1, 30, what="1 worker process")
        time.sleep(2.0)  # nothing else comes back to life
        assert len(worker_pids(front)) == 1
        assert {w["pid"] for w in _status(tmp_path)["workers"]} == worker_pids(front)
        server.signal(signal.SIGHUP)  # a later reload replaces exactly that one
        wait_until(lambda: "reload complete: 1 workers replaced" in server.output(), 30)
        wait_until(lambda: len(worker_pids(front)) == 1, 20)


def test_a_child_that_outlives_its_worker_holds_nothing_of_it(tmp_path: Path):
    """The handler starts `sleep 40 &`; its worker is then killed. The slot must
    restart at once (the front watches the process, not the channel's EOF) and
    shutdown must not wait for the sleep."""
    with RRProxy(*_admin(tmp_path), "--graceful-timeout", "3", FAULTY, workers=2) as server:
        clients = client_per_worker(server.port, 2)
        clients[1].send(b"GET /child-fds HTTP/1.1\r\nHost: t\r\n\r\n")
        listing = clients[1].read_response().body.decode()
        # stdin, stdout, stderr and the listing's own: no socket of the worker.
        assert "socket:" not in listing, listing
        clients[1].send(b"GET /spawn-sleeper?s=40 HTTP/1.1\r\nHost: t\r\n\r\n")
        assert clients[1].read_response().status == 200
        old = server.pids[1]
        os.kill(old, signal.SIGKILL)
        wait_until(
            lambda: (
                _status(tmp_path)["workers"][0]["pid"] not in (None, old)
                and _status(tmp_path)["workers"][0]["state"] == "ready"
            ),
            10,
            what="slot 1 restarted",
        )
        started = time.monotonic()
        server.signal(signal.SIGTERM)
        assert server.wait(15) == 0
        assert time.monotonic() - started < 8
        for client in clients.values():
            client.close()


def test_memory_state_is_bounded_in_bytes(tmp_path: Path):
    args = ("--state-max-memory", "8M", *_admin(tmp_path), FAULTY)
    with RRProxy(*args, workers=2) as server:
        before = rss_bytes(server.proc.pid)
        answer = json.loads(get(server.port, "/state-fill?kb=100&n=400").body)
        assert 40 <= answer["stored"] < 90, answer
        assert "full" in answer["full"] and "--state-max-memory" in answer["full"]
        assert get(server.port, "/state-full-uncaught").status == 507
        assert rss_bytes(server.proc.pid) - before < 40 * 2**20


def test_messages_to_a_worker_that_reads_none_are_bounded(tmp_path: Path):
    """Worker 2's loop is blocked; worker 1 sends it 20 MB of messages. The front
    queues a bounded amount, the sender hears MessageDropped for the rest, and the
    front does not grow by the 20 MB (it grew to 2.2 GB before)."""
    args = ("--timeout", "60", *_admin(tmp_path), FAULTY)
    with RRProxy(*args, workers=2) as server:
        clients = client_per_worker(server.port, 2)
        before = rss_bytes(server.proc.pid)
        clients[2].send(b"GET /block?s=6 HTTP/1.1\r\nHost: t\r\n\r\n")
        time.sleep(0.3)
        clients[1].send(b"GET /flood?to=2&n=330&kb=60 HTTP/1.1\r\nHost: t\r\n\r\n")
        answer = json.loads(clients[1].read_response().body)
        # Dropped while it was full; once its replacement took the slot, delivered (how
        # many of each depends on how fast the replacement starts: a fork is faster).
        assert answer["dropped"] > 0 and answer["delivered"] + answer["dropped"] == 330
        assert rss_bytes(server.proc.pid) - before < 30 * 2**20
        assert "leaves its messages unread" in server.output()
        # It is replaced (its messages cannot reach it) and the front serves on.
        wait_until(lambda: _serving(server.port), 20)
        for client in clients.values():
            client.close()


@pytest.mark.parametrize("policy", ["rr", "none"])
def test_malformed_messages_from_user_code_do_not_crash_the_front(tmp_path: Path, policy: str):
    with RRProxy("--policy", policy, *_admin(tmp_path), FAULTY, workers=2) as server:
        front = server.proc.pid
        get(server.port)
        fds_before = open_fds(front)
        kinds = ("deep", "superscript", "longaddr", "statuskey", "nan", "surrogate", "empty")
        for kind in (*kinds, "fd", "fd", "fd"):
            client = RawClient(server.port)
            client.send(f"GET /ipc?kind={kind} HTTP/1.1\r\nHost: t\r\n\r\n".encode())
            assert client.read_response().status == 200
            client.close()
            time.sleep(0.2)
            assert server.proc.poll() is None, server.output()
        wait_until(lambda: _serving(server.port), 20, what="serving")
        time.sleep(1.0)
        # Breaching workers are replaced; the fds they sent were closed, not kept.
        wait_until(lambda: open_fds(front) <= fds_before, 20, what="no fd kept")
        assert "Traceback" not in server.output()


def test_admin_socket_path_that_is_a_regular_file_is_not_deleted(tmp_path: Path):
    precious = tmp_path / "precious.txt"
    precious.write_text("do not delete me")
    result = run_cli("--port", "0", "--admin", f"unix:{precious}", FAULTY)
    assert result.returncode == 2
    assert "is not a socket" in result.stderr
    assert precious.read_text() == "do not delete me"


def test_tcp_admin_always_needs_a_token():
    result = run_cli("--port", "0", "--admin", "127.0.0.1:0", FAULTY)
    assert result.returncode == 2
    assert "needs --admin-token" in result.stderr


def test_workers_do_not_inherit_the_admin_token(tmp_path: Path):
    env = {"RRPROXY_ADMIN_TOKEN": "front-only-secret"}
    with RRProxy(*_admin(tmp_path), FAULTY, workers=1, env=env) as server:
        seen = json.loads(get(server.port, "/env").body)
        assert "RRPROXY_ADMIN_TOKEN" not in seen
        assert "front-only-secret" not in server.output()


def test_stop_during_boot_exits_cleanly():
    server = RRProxy(FAULTY, workers=2)
    server.start_without_waiting()
    # The moment the workers exist (still starting their interpreters): the Stop
    # reaches them before their Configure.
    wait_until(lambda: worker_pids(server.proc.pid), 10, 0.005, what="workers spawned")
    server.signal(signal.SIGTERM)
    assert server.wait(20) == 0, server.output()
    assert "expected Configure" not in server.output()


def test_a_stopped_worker_does_not_keep_connections_waiting(tmp_path: Path):
    """SIGSTOP a worker: the front stops handing it connections at once, and those
    already handed (unread) go to the other worker after --handoff-timeout."""
    args = ("--handoff-timeout", "1", *_admin(tmp_path), FAULTY)
    with RRProxy(*args, workers=2) as server:
        stopped = server.pids[1]
        os.kill(stopped, signal.SIGSTOP)
        started = time.monotonic()
        try:
            answers = [get(server.port, timeout=10) for _ in range(8)]
        finally:
            try:
                os.kill(stopped, signal.SIGCONT)
            except ProcessLookupError:
                pass  # killed by the front, as it should be
        assert all(a.status == 200 for a in answers)
        assert str(stopped) not in {a.header("x-worker-pid") for a in answers}
        assert time.monotonic() - started < 6
        assert "is stopped with" in server.output()


def test_an_empty_record_on_the_channel_does_not_cost_in_flight_requests():
    """An empty datagram reads as 0 bytes, as the end of the channel does; the
    worker that sent it was once killed on the spot as "gone", losing what it served."""
    with RRProxy(FAULTY, workers=1) as server:
        slow = RawClient(server.port)
        slow.send(b"GET /slow?s=2 HTTP/1.1\r\nHost: t\r\n\r\n")
        time.sleep(0.3)
        get(server.port, "/ipc?kind=empty")
        assert slow.read_response().status == 200
        assert "did not exit; killing it" not in server.output()


def test_idle_connections_do_not_make_workers_look_stalled():
    """Connections that send nothing are never answered Taken; a worker holding them
    is still alive and must keep getting connections."""
    with RRProxy(FAULTY, workers=2) as server:
        idle = [socket.create_connection(("127.0.0.1", server.port)) for _ in range(4)]
        time.sleep(2.5)
        for _ in range(6):
            started = time.monotonic()
            assert get(server.port).status == 200
            assert time.monotonic() - started < 1.0
        for sock in idle:
            sock.close()


def test_scaling_down_during_boot_still_boots(tmp_path: Path):
    app = tmp_path / "slow_boot.py"
    app.write_text("import time\ntime.sleep(1.5)\nasync def handler(request):\n    return 'up'\n")
    server = RRProxy("--app-dir", str(tmp_path), "slow_boot:handler", workers=3)
    server.start_without_waiting()
    try:
        wait_until(lambda: worker_pids(server.proc.pid), 10, 0.01, what="workers spawned")
        time.sleep(0.3)  # the front's signal handlers are installed
        server.signal(signal.SIGTTOU)
        server.wait_for("rrproxy: listening on", 30)
        port = int(server.wait_for(r"listening on http://127.0.0.1:(\d+)").group(1))
        assert get(port).body == b"up"
    finally:
        server.__exit__(None, None, None)


def test_the_admin_socket_path_is_only_removed_if_it_is_still_ours(tmp_path: Path):
    path = tmp_path / "admin.sock"
    with RRProxy("--admin", f"unix:{path}", FAULTY, workers=1) as server:
        path.unlink()
        path.write_text("someone else's file")
        server.signal(signal.SIGTERM)
        server.wait(20)
    assert path.read_text() == "someone else's file"
