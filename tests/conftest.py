"""Shared fixtures. Tools the tests need are installed here if missing, so the
README's one test command works on a fresh machine; nothing is silently skipped."""

from __future__ import annotations

import shutil
import subprocess

import pytest

from loadtest.processes import stop_process_group


def ensure_installed(binary: str, package: str, service: str | None = None) -> str:
    """The path of `binary`, installing Debian's `package` first if it is missing (and
    stopping the service the package starts: the tests run their own servers)."""
    path = shutil.which(binary)
    if path is None:
        subprocess.run(["apt-get", "update", "-q"], check=True, capture_output=True, timeout=600)
        subprocess.run(
            ["apt-get", "install", "-y", "-q", package],
            check=True,
            capture_output=True,
            timeout=600,
        )
        if service:
            subprocess.run(["service", service, "stop"], capture_output=True, timeout=60)
        path = shutil.which(binary)
    assert path, f"{binary} is needed and could not be installed with apt-get"
    return path


@pytest.fixture(scope="session")
def wrk() -> str:
    return ensure_installed("wrk", "wrk")


class RedisServer:
    """A real redis-server on a free loopback port, no persistence; stoppable and
    restartable on the same port (for outage tests)."""

    def __init__(self, binary: str) -> None:
        import socket

        self.binary = binary
        with socket.socket() as sock:
            sock.bind(("127.0.0.1", 0))
            self.port = sock.getsockname()[1]
        self.proc: subprocess.Popen[bytes] | None = None

    @property
    def url(self) -> str:
        return f"redis://127.0.0.1:{self.port}/0"

    def start(self) -> None:
        import socket
        import time

        self.proc = subprocess.Popen(
            [
                self.binary,
                "--port",
                str(self.port),
                "--bind",
                "127.0.0.1",
                "--save",
                "",
                "--appendonly",
                "no",
                "--protected-mode",
                "yes",
            ],
            stdout=subprocess.DEVNULL,
            stderr=subprocess.DEVNULL,
        )
        deadline = time.monotonic() + 10
        while time.monotonic() < deadline:
            try:
                socket.create_connection(("127.0.0.1", self.port), timeout=0.5).close()
                return
            except OSError:
                time.sleep(0.05)
        raise AssertionError("redis-server did not start")

    def stop(self) -> None:
        if self.proc is not None:
            stop_process_group(self.proc, 10)


@pytest.fixture(scope="session")
def redis_binary() -> str:
    return ensure_installed("redis-server", "redis-server", service="redis-server")


@pytest.fixture
def redis(redis_binary: str):
    server = RedisServer(redis_binary)
    server.start()
    try:
        yield server
    finally:
        server.stop()


@pytest.fixture(scope="session")
def haproxy_binary() -> str:
    return ensure_installed("haproxy", "haproxy", service="haproxy")


@pytest.fixture(params=["trio", "uvloop"])
def each_loop(request, monkeypatch) -> str:
    """Run the test once per worker event loop (rrproxy reads $RRPROXY_LOOP for
    --loop): the worker's behaviour must not depend on the loop."""
    monkeypatch.setenv("RRPROXY_LOOP", request.param)
    return request.param
