"""Every client-controlled input has a limit and a clear answer: attacked for real,
through real processes. The byte-level answers (413, 431, 400, 408, keep-alive expiry)
are unit-tested on both loops in rrproxy/worker/test_connection.py and
rrproxy/protocol/test_http11.py; what stays here needs a process: other clients,
workers and the front."""

from __future__ import annotations

import socket
import threading
import time

import pytest

from tests.helpers import PROBE, RawClient, RRProxy, get

pytestmark = pytest.mark.usefixtures("each_loop")


@pytest.fixture(scope="module")
def strict():
    """One server with small limits, shared by the quick attacks below."""
    with RRProxy(
        "--max-header-size",
        "2K",
        "--max-body-size",
        "1K",
        "--header-timeout",
        "1",
        "--keep-alive",
        "1",
        PROBE,
        workers=2,
    ) as server:
        yield server


def test_client_faults_do_not_disturb_others(strict):
    # Reset mid-request.
    reset = socket.create_connection(("127.0.0.1", strict.port))
    reset.sendall(b"POST /echo HTTP/1.1\r\nHost: t\r\nContent-Length: 100\r\n\r\nabc")
    reset.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, b"\x01\x00\x00\x00\x00\x00\x00\x00")
    reset.close()
    # Half-close after a complete request: still answered.
    half = RawClient(strict.port)
    half.send(b"GET /text HTTP/1.1\r\nHost: t\r\n\r\n")
    half.sock.shutdown(socket.SHUT_WR)
    assert half.read_response().body == b"plain text"
    half.close()
    # Reset mid-response: a big streamed response the client stops reading.
    big = socket.create_connection(("127.0.0.1", strict.port))
    big.sendall(b"GET /stream?n=20000 HTTP/1.1\r\nHost: t\r\n\r\n")
    big.recv(100)
    big.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, b"\x01\x00\x00\x00\x00\x00\x00\x00")
    big.close()
    # Everyone else is fine, and no worker died.
    for _ in range(4):
        assert get(strict.port).status == 200
    assert "exited" not in strict.output()


def test_disconnect_cancels_the_running_handler():
    with RRProxy(PROBE, workers=1) as server:
        client = socket.create_connection(("127.0.0.1", server.port))
        client.sendall(b"GET /slow?s=20 HTTP/1.1\r\nHost: t\r\n\r\n")
        time.sleep(0.3)
        client.close()
        server.wait_for(r"went away; cancelling its handler", timeout=5)
        assert get(server.port).status == 200


def test_limit_concurrency_answers_503_at_once():
    with RRProxy("--limit-concurrency", "1", PROBE, workers=1) as server:
        busy = RawClient(server.port)
        busy.send(b"GET /slow?s=3 HTTP/1.1\r\nHost: t\r\n\r\n")
        time.sleep(0.3)
        started = time.monotonic()
        response = get(server.port)
        assert response.status == 503
        assert time.monotonic() - started < 2
        assert busy.read_response().status == 200
        busy.close()


def test_under_rr_the_front_prefers_workers_below_their_limit():
    with RRProxy("--limit-concurrency", "1", PROBE, workers=2) as server:
        busy = RawClient(server.port)
        busy.send(b"GET /slow?s=3 HTTP/1.1\r\nHost: t\r\n\r\n")
        time.sleep(0.5)
        # Round-robin alone would send every other connection to the busy worker.
        statuses = [get(server.port).status for _ in range(6)]
        assert statuses == [200] * 6
        busy.close()


@pytest.mark.parametrize("policy", ["rr", "none"])
def test_max_connections_leaves_new_ones_in_the_backlog(policy):
    with RRProxy("--policy", policy, "--max-connections", "2", PROBE, workers=2) as server:
        slow = [RawClient(server.port) for _ in range(2)]
        for client in slow:
            client.send(b"GET /slow?s=1.5 HTTP/1.1\r\nHost: t\r\nConnection: close\r\n\r\n")
        time.sleep(0.3)
        done: dict[str, float] = {}

        def third() -> None:
            response = get(server.port)
            done["status"] = response.status
            done["at"] = time.monotonic()

        started = time.monotonic()
        thread = threading.Thread(target=third)
        thread.start()
        for client in slow:
            assert client.read_response().status == 200
            client.close()
        finished_slow = time.monotonic()
        thread.join(10)
        assert done["status"] == 200
        # It waited in the kernel backlog until a slot freed up.
        assert done["at"] >= finished_slow - 0.2
        assert done["at"] - started > 0.8
