"""Shared fixtures. Tools the tests need are installed here if missing, so the
README's one test command works on a fresh machine; nothing is silently skipped."""

from __future__ import annotations

import shutil
import subprocess

import pytest


@pytest.fixture(scope="session")
def wrk() -> str:
    path = shutil.which("wrk")
    if path is None:
        subprocess.run(["apt-get", "update", "-q"], check=True, capture_output=True, timeout=600)
        subprocess.run(
            ["apt-get", "install", "-y", "-q", "wrk"], check=True, capture_output=True, timeout=600
        )
        path = shutil.which("wrk")
    assert path, "wrk is needed and could not be installed with apt-get"
    return path


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
        if self.proc is not None and self.proc.poll() is None:
            self.proc.terminate()
            self.proc.wait(10)


@pytest.fixture(scope="session")
def redis_binary() -> str:
    path = shutil.which("redis-server")
    if path is None:
        subprocess.run(["apt-get", "update", "-q"], check=True, capture_output=True, timeout=600)
        subprocess.run(
            ["apt-get", "install", "-y", "-q", "redis-server"],
            check=True,
            capture_output=True,
            timeout=600,
        )
        # Debian starts the service on install; the tests run their own servers.
        subprocess.run(["service", "redis-server", "stop"], capture_output=True, timeout=60)
        path = shutil.which("redis-server")
    assert path, "redis-server is needed and could not be installed with apt-get"
    return path


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
    path = shutil.which("haproxy")
    if path is None:
        subprocess.run(["apt-get", "update", "-q"], check=True, capture_output=True, timeout=600)
        subprocess.run(
            ["apt-get", "install", "-y", "-q", "haproxy"],
            check=True,
            capture_output=True,
            timeout=600,
        )
        subprocess.run(["service", "haproxy", "stop"], capture_output=True, timeout=60)
        path = shutil.which("haproxy")
    assert path, "haproxy is needed and could not be installed with apt-get"
    return path
