"""No client input and no response a handler builds can kill a worker: what once
did (CONNECT, a request smuggled behind a chunked body, a 204 with a body, a wrong
Content-Length) is answered, and the worker and its other connections live on."""

from __future__ import annotations

import socket

import h11
import pytest
import trio

from rrproxy.config import WorkerConfig
from rrproxy.worker import native_response
from rrproxy.worker.server import WorkerServer
from rrproxy.worker.trio import BACKEND
from tests.helpers import RawClient, RRProxy, client_per_worker

pytestmark = pytest.mark.usefixtures("each_loop")

FAULTY = "tests.apps.faulty:handler"
SMUGGLE = (
    b"POST /echo HTTP/1.1\r\nHost: x\r\nTransfer-Encoding: chunked\r\nContent-Length: 5\r\n\r\n"
    b"0\r\n\r\nGET /smuggled HTTP/1.1\r\nHost: x\r\n\r\n"
)


@pytest.mark.parametrize("app", [FAULTY, "workers.asgi_hello:app"])
def test_connect_is_answered_501_and_the_worker_lives(app: str):
    with RRProxy(app, workers=1) as server:
        bystander = RawClient(server.port)
        bystander.send(b"GET / HTTP/1.1\r\nHost: t\r\n\r\n")
        assert bystander.read_response().status == 200
        for _ in range(20):
            client = RawClient(server.port)
            client.send(b"CONNECT example.com:443 HTTP/1.1\r\nHost: example.com:443\r\n\r\n")
            assert client.read_response().status == 501
            assert client.at_eof()
            client.close()
        # The same worker (and this keep-alive connection to it) is still there.
        bystander.send(b"GET / HTTP/1.1\r\nHost: t\r\n\r\n")
        assert bystander.read_response().status == 200
        assert "exited" not in server.output()


def test_the_smuggling_example_gets_400_and_the_hidden_request_is_never_served():
    with RRProxy(FAULTY, workers=1) as server:
        client = RawClient(server.port)
        client.send(SMUGGLE)
        response = client.read_response()
        assert response.status == 400
        assert client.at_eof()
        assert b"smuggled" not in client.buffer


@pytest.mark.parametrize("code", [204, 304])
def test_a_bodiless_status_with_a_body_sends_no_body(code: int):
    with RRProxy(FAULTY, workers=1) as server:
        (client,) = client_per_worker(server.port, 1).values()
        client.send(f"GET /status-with-body?code={code} HTTP/1.1\r\nHost: t\r\n\r\n".encode())
        assert client.read_response().status == code
        client.send(b"GET / HTTP/1.1\r\nHost: t\r\n\r\n")  # the connection is intact
        assert client.read_response().status == 200


def test_a_content_length_that_lies_gets_500_not_a_dead_worker():
    with RRProxy(FAULTY, workers=1) as server:
        client = RawClient(server.port)
        client.send(b"GET /wrong-length HTTP/1.1\r\nHost: t\r\n\r\n")
        assert client.read_response().status == 500
        bystander = RawClient(server.port)
        bystander.send(b"GET / HTTP/1.1\r\nHost: t\r\n\r\n")
        assert bystander.read_response().status == 200
        assert "invalid response from the handler" in server.output()


# --- containment, in process: whatever escapes one connection stays there -------------


class _Broken(Exception):
    pass


@pytest.mark.parametrize(
    "error", [h11.LocalProtocolError("x"), h11.RemoteProtocolError("x"), _Broken("x")]
)
async def test_an_exception_escaping_a_connection_ends_only_that_connection(
    error, caplog, monkeypatch
):
    server = WorkerServer(WorkerConfig(app="x:y"), 1, lambda request: "ok", False, BACKEND)
    ours, theirs = socket.socketpair()

    async def explode(*args: object) -> bool:
        raise error

    # Where the response is written: an error there escapes the request's handling.
    monkeypatch.setattr(native_response, "send_response", explode)
    async with trio.open_nursery() as nursery:
        server.serve_in(nursery)  # type: ignore[arg-type]
        server.start_connection(ours)
        theirs.sendall(b"GET / HTTP/1.1\r\nHost: t\r\n\r\n")
        with trio.fail_after(5):
            while server.connections:
                await trio.sleep(0.01)
        nursery.cancel_scope.cancel()
    assert theirs.recv(100) == b""  # closed, not left hanging
    assert "internal error on a connection" in caplog.text
    theirs.close()


def test_a_head_dripped_a_byte_at_a_time_still_times_out():
    """--header-timeout bounds the whole head, not each read: a slowloris that sends
    a byte every 0.3 s gets 408 after about a second, not never."""
    import time

    with RRProxy("--header-timeout", "1", FAULTY, workers=1) as server:
        client = RawClient(server.port)
        started = time.monotonic()
        for byte in b"GET / HTTP/1.1\r\nHost: t\r\nX-Slow: " + b"a" * 30:
            try:
                client.send(bytes([byte]))
            except OSError:
                break
            if _readable(client.sock):
                break  # the server answered (408)
            time.sleep(0.3)
        response = client.read_response()
        assert response.status == 408
        assert time.monotonic() - started < 4


def _readable(sock: socket.socket) -> bool:
    import select

    return bool(select.select([sock], [], [], 0)[0])
