"""The admin client (`rrproxy status`, `reload`...) against real loopback servers
that answer badly: every failure is an AdminError with a reason, never a traceback."""

from __future__ import annotations

import socket
import threading
from collections.abc import Iterator

import pytest

from .control import AdminClient, AdminError


@pytest.fixture
def answering() -> Iterator[list[bytes]]:
    """A loopback server that answers each connection with the next of the bytes
    put in the list it gives, then closes."""
    answers: list[bytes] = []
    listener = socket.create_server(("127.0.0.1", 0))
    listener.settimeout(0.05)
    stop = threading.Event()

    def serve() -> None:
        while not stop.is_set():
            try:
                conn, _ = listener.accept()
            except TimeoutError:
                continue
            except OSError:
                return
            with conn:
                conn.recv(65536)
                if answers:
                    conn.sendall(answers.pop(0))

    thread = threading.Thread(target=serve, daemon=True)
    thread.start()
    global _port
    _port = listener.getsockname()[1]
    yield answers
    stop.set()
    thread.join(5)
    listener.close()


_port = 0


def _client() -> AdminClient:
    return AdminClient(f"127.0.0.1:{_port}", timeout=5)


@pytest.mark.parametrize(
    ("answer", "reason"),
    [
        (b"SSH-2.0-OpenSSH_9.6\r\n", "BadStatusLine"),
        (b"HTTP/1.1 200 OK\r\nContent-Length: 100\r\n\r\nshort", "IncompleteRead"),
        (b"HTTP/1.1 200 OK\r\nX: " + b"a" * 70000 + b"\r\n\r\n", "LineTooLong"),
        (b"", "cannot reach|RemoteDisconnected"),
    ],
    ids=["not-http", "cut-short", "endless-header", "closed-at-once"],
)
def test_a_bad_answer_is_an_admin_error(answering: list[bytes], answer: bytes, reason: str) -> None:
    answering.append(answer)
    with pytest.raises(AdminError, match=reason):
        _client().json("GET", "/status")


def test_an_error_status_with_a_json_list_body_is_an_admin_error(answering: list[bytes]) -> None:
    body = b'["no", "dict"]'
    answering.append(b"HTTP/1.1 500 Oops\r\nContent-Length: %d\r\n\r\n%s" % (len(body), body))
    with pytest.raises(AdminError, match=r"HTTP 500: \['no', 'dict'\]"):
        _client().json("GET", "/status")


def test_nobody_listening_is_an_admin_error() -> None:
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        port = probe.getsockname()[1]
    with pytest.raises(AdminError, match="cannot reach"):
        AdminClient(f"127.0.0.1:{port}", timeout=5).json("GET", "/status")
