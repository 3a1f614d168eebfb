"""Where rrproxy listens: several --bind addresses at once (TCP and Unix) under every
policy, --uds with its mode, --fd, and systemd socket activation through a launcher
that does what systemd does (bind, set LISTEN_FDS/LISTEN_PID, exec)."""

from __future__ import annotations

import json
import os
import socket
import stat
import subprocess
import sys
import textwrap
from pathlib import Path

import pytest

from tests.helpers import PROBE, REPO, RRProxy, get, wait_until

LISTENING = r"rrproxy: listening on (?P<where>.+) \(policy"


def free_port() -> int:
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        return probe.getsockname()[1]


def get_unix(path: str, target: str = "/") -> tuple[int, bytes]:
    with socket.socket(socket.AF_UNIX) as sock:
        sock.settimeout(10)
        sock.connect(path)
        sock.sendall(f"GET {target} HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n".encode())
        data = b""
        while chunk := sock.recv(65536):
            data += chunk
    head, _, body = data.partition(b"\r\n\r\n")
    return int(head.split()[1]), body


def _worker_ids_over(fetch, count: int) -> set[str]:
    return {fetch() for _ in range(count)}


@pytest.mark.parametrize("policy", ["rr", "least-conn", "none", "reuseport"])
def test_every_bind_is_served_under_every_policy(tmp_path: Path, policy: str):
    port_a, port_b = free_port(), free_port()
    uds = str(tmp_path / "app.sock")
    args = ("-b", f"127.0.0.1:{port_a}", "--bind", f"127.0.0.1:{port_b}", "-b", f"unix:{uds}")
    with RRProxy(*args, "--policy", policy, PROBE, workers=2) as server:
        line = server.wait_for(LISTENING)["where"]
        assert f"http://127.0.0.1:{port_a}" in line and f"unix:{uds}" in line
        for port in (port_a, port_b):
            served_by = _worker_ids_over(
                lambda port=port: get(port).header("x-worker-id") or "", 40
            )
            assert served_by <= {"1", "2"} and served_by, served_by
        statuses = {get_unix(uds)[0] for _ in range(10)}
        assert statuses == {200}
        if policy in ("rr", "least-conn"):
            # The front hands out every listener's connections from one rotation.
            ids = [get(port_a if i % 2 else port_b).header("x-worker-id") for i in range(8)]
            assert set(ids) == {"1", "2"}


def test_uds_mode_and_the_client_address(tmp_path: Path):
    uds = tmp_path / "private.sock"
    with RRProxy("--uds", str(uds), "--uds-mode", "600", PROBE, workers=1) as server:
        assert stat.S_IMODE(os.stat(uds).st_mode) == 0o600
        status, body = get_unix(str(uds), "/headers")
        assert status == 200
        assert json.loads(body)["client"] is None  # no peer address on a unix socket
        # As uvicorn's --uds: the unix socket instead of --host/--port, not as well.
        assert server.wait_for(LISTENING)["where"] == f"unix:{uds}"
    assert not uds.exists()  # removed on a clean stop


def test_a_stale_socket_file_is_replaced_but_a_live_one_is_not(tmp_path: Path):
    uds = tmp_path / "app.sock"
    stale = socket.socket(socket.AF_UNIX)
    stale.bind(str(uds))
    stale.close()  # the file stays, nobody listens: a crashed server's leftover
    with RRProxy("--uds", str(uds), PROBE, workers=1):
        assert get_unix(str(uds))[0] == 200
        second = subprocess.run(
            [sys.executable, "-m", "rrproxy", "--uds", str(uds), "--workers", "1", PROBE],
            cwd=REPO, capture_output=True, text=True, timeout=30,
        )  # fmt: skip
        assert second.returncode == 2
        assert "another server listens there" in second.stderr


@pytest.mark.parametrize(
    "bad",
    [("--policy", "nosuchmodule:policy"), ("--admin", "unix:{tmp}/no/such/dir/admin.sock")],
    ids=["policy", "admin"],
)
def test_a_failed_start_leaves_no_socket_file_behind(tmp_path: Path, bad: tuple[str, str]):
    """The bind succeeded, then the start failed (a policy that does not import, an
    admin socket that cannot be bound): the unix socket file made is removed."""
    uds = tmp_path / "app.sock"
    option, value = bad[0], bad[1].format(tmp=tmp_path)
    result = subprocess.run(
        [sys.executable, "-m", "rrproxy", "--uds", str(uds), "--workers", "1", option, value,
         PROBE],
        cwd=REPO, capture_output=True, text=True, timeout=30,
    )  # fmt: skip
    assert result.returncode == 2, result.stderr
    assert "Traceback" not in result.stderr
    assert list(tmp_path.iterdir()) == []


LAUNCHER = textwrap.dedent(
    """
    # What systemd does for a .socket unit: bind, pass the sockets from fd 3 on,
    # name this pid as their owner, exec the service.
    import os, socket, sys
    ports = [int(p) for p in sys.argv[1].split(",")]
    high = []
    for port in ports:
        sock = socket.socket()
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        sock.bind(("127.0.0.1", port))
        sock.listen(128)
        high.append(os.dup2(sock.fileno(), 100 + len(high)))  # clear of 3, 4, ...
        sock.close()
    for index, fd in enumerate(high):
        os.dup2(fd, 3 + index, inheritable=True)
        os.close(fd)
    os.environ["LISTEN_FDS"] = str(len(ports))
    os.environ["LISTEN_PID"] = str(os.getpid())
    os.environ["LISTEN_FDNAMES"] = ":".join("web" for _ in ports)
    os.execv(sys.executable, [sys.executable, "-m", "rrproxy", *sys.argv[2:]])
    """
)


def _env_app(tmp_path: Path) -> None:
    (tmp_path / "envapp.py").write_text(
        "import os\n"
        "async def handler(request):\n"
        "    return {k: os.environ.get(k) for k in ('LISTEN_FDS', 'LISTEN_PID')}\n"
    )


@pytest.mark.parametrize("policy", ["rr", "none"])
def test_systemd_socket_activation(tmp_path: Path, policy: str):
    _env_app(tmp_path)
    launcher = tmp_path / "launcher.py"
    launcher.write_text(LAUNCHER)
    ports = [free_port(), free_port()]
    proc = subprocess.Popen(
        [sys.executable, str(launcher), ",".join(map(str, ports)), "--workers", "2",
         "--policy", policy, "--app-dir", str(tmp_path), "envapp:handler"],
        cwd=REPO, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True,
        env={**os.environ, "PYTHONUNBUFFERED": "1"}, start_new_session=True,
    )  # fmt: skip
    try:
        assert proc.stdout is not None
        for line in proc.stdout:
            if "listening on" in line:
                break
        else:
            raise AssertionError("rrproxy never listened")
        # Both inherited sockets are served; rrproxy bound nothing itself (no --port
        # 8000 default listener appeared).
        assert f"http://127.0.0.1:{ports[0]}" in line and f"http://127.0.0.1:{ports[1]}" in line
        assert ":8000" not in line
        for port in ports:
            response = get(port)
            assert response.status == 200
            # The variables were for the front: workers (and what they start) must not
            # believe the sockets are theirs.
            assert json.loads(response.body) == {"LISTEN_FDS": None, "LISTEN_PID": None}
    finally:
        proc.terminate()
        assert proc.wait(20) == 0


def test_listen_pid_of_another_process_is_ignored(tmp_path: Path):
    result = subprocess.run(
        [sys.executable, "-m", "rrproxy", "--print-config", PROBE],
        cwd=REPO, capture_output=True, text=True, timeout=30,
        env={**os.environ, "LISTEN_FDS": "1", "LISTEN_PID": "1"},
    )  # fmt: skip
    assert result.returncode == 0
    bind = next(line for line in result.stdout.splitlines() if line.startswith("bind "))
    assert "fd://" not in bind


def test_fd_option(tmp_path: Path):
    sock = socket.socket()
    sock.bind(("127.0.0.1", 0))
    sock.listen(16)
    port = sock.getsockname()[1]
    fd = os.dup(sock.fileno())
    sock.close()
    os.set_inheritable(fd, True)
    try:
        server = RRProxy("--fd", str(fd), PROBE, workers=2)
        server.argv = [a for a in server.argv if a not in ("--port", "0")]
        proc_kwargs = dict(pass_fds=(fd,))
        env = {**os.environ, "PYTHONUNBUFFERED": "1"}
        server.proc = subprocess.Popen(
            server.argv, cwd=REPO, stdout=subprocess.PIPE, stderr=subprocess.STDOUT,
            text=True, env=env, start_new_session=True, **proc_kwargs,
        )  # fmt: skip
        import threading

        assert server.proc.stdout is not None
        threading.Thread(target=server._pump, args=(server.proc.stdout,), daemon=True).start()
        line = server.wait_for(LISTENING)["where"]
        assert line == f"http://127.0.0.1:{port}"
        wait_until(lambda: get(port).status == 200, 10, what="served on the inherited fd")
        server.stop()
        assert server.proc.returncode == 0
    finally:
        os.close(fd)


@pytest.mark.parametrize(
    ("args", "expected"),
    [
        (["--fd", "97"], "fd://97 is not a socket"),
        (["--bind", "unix:"], "--bind unix: needs a path"),
        (["--bind", "localhost"], "--bind must be HOST:PORT, unix:PATH or fd://N"),
        (["--bind", "fd://x"], "needs a file descriptor number"),
    ],
)
def test_bad_addresses_exit_2(args: list[str], expected: str):
    result = subprocess.run(
        [sys.executable, "-m", "rrproxy", *args, PROBE],
        cwd=REPO, capture_output=True, text=True, timeout=30,
    )  # fmt: skip
    assert result.returncode == 2, result
    assert expected in result.stderr and "Traceback" not in result.stderr


def test_a_regular_file_is_never_deleted(tmp_path: Path):
    precious = tmp_path / "data.txt"
    precious.write_text("keep me")
    result = subprocess.run(
        [sys.executable, "-m", "rrproxy", "--uds", str(precious), PROBE],
        cwd=REPO, capture_output=True, text=True, timeout=30,
    )  # fmt: skip
    assert result.returncode == 2 and "is not a socket" in result.stderr
    assert precious.read_text() == "keep me"
