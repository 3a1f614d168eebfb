"""End-to-end: a real rrproxy process, real sockets, real HTTP."""

from __future__ import annotations

import collections
import os
import signal
import socket
import threading
import time

import httpx
import pytest

from tests.helpers import PROBE, RawClient, RRProxy, get

pytestmark = pytest.mark.usefixtures("each_loop")


def test_rr_spreads_new_connections_exactly_evenly():
    with RRProxy("--policy", "rr", PROBE, workers=4) as server:
        served = collections.Counter(get(server.port).header("x-worker-id") for _ in range(40))
    assert served == {"1": 10, "2": 10, "3": 10, "4": 10}


def test_none_policy_serves_from_every_worker_process():
    with RRProxy("--policy", "none", PROBE, workers=2) as server:
        responses = [get(server.port) for _ in range(30)]
        assert server.output().count("ready (pid") == 2
    assert all(r.status == 200 for r in responses)
    pids = {int(r.header("x-worker-pid")) for r in responses}
    # The kernel decides, and it may well favour one worker (that is the point of
    # the policy comparison); every response still comes from one of ours.
    assert pids <= set(server.pids.values())
    assert "policy none, 2 workers" in server.output()


def test_keep_alive_and_pipelining_answer_in_order_on_one_connection():
    with RRProxy(PROBE) as server:
        client = RawClient(server.port)
        for _ in range(3):
            client.send(b"GET / HTTP/1.1\r\nHost: t\r\n\r\n")
            response = client.read_response()
            assert response.status == 200
            assert response.header("connection") is None
        # Three requests in one write: answered in order.
        client.send(
            b"GET /text HTTP/1.1\r\nHost: t\r\n\r\n"
            b"POST /echo HTTP/1.1\r\nHost: t\r\nContent-Length: 5\r\n\r\nhello"
            b"GET /json HTTP/1.1\r\nHost: t\r\nConnection: close\r\n\r\n"
        )
        first, second, third = (client.read_response() for _ in range(3))
        assert first.body == b"plain text"
        assert second.body == b"hello"
        assert third.header("content-type") == "application/json"
        assert third.header("connection") == "close"
        assert client.at_eof()
        client.close()


def test_chunked_upload_and_streaming_response():
    with RRProxy(PROBE) as server:
        client = RawClient(server.port)
        client.send(
            b"POST /echo HTTP/1.1\r\nHost: t\r\nTransfer-Encoding: chunked\r\n\r\n"
            b"5\r\nhello\r\n7\r\n, world\r\n0\r\n\r\n"
        )
        echoed = client.read_response()
        assert echoed.status == 200
        assert echoed.body == b"hello, world"
        client.send(b"GET /stream?n=4 HTTP/1.1\r\nHost: t\r\n\r\n")
        streamed = client.read_response()
        assert streamed.header("transfer-encoding") == "chunked"
        assert streamed.body == b"chunk 0\nchunk 1\nchunk 2\nchunk 3\n"
        client.close()
        # A real client library agrees.
        with httpx.Client(base_url=server.url, timeout=10) as http:
            payload = os.urandom(200_000)
            response = http.post("/echo", content=iter([payload[:1000], payload[1000:]]))
            assert response.status_code == 200
            assert response.content == payload


def test_head_expect_continue_date_and_return_types():
    with RRProxy(PROBE) as server:
        client = RawClient(server.port)
        client.send(b"HEAD /text HTTP/1.1\r\nHost: t\r\n\r\n")
        head = client.read_response(head_request=True)
        assert head.status == 200
        assert head.header("content-length") == str(len(b"plain text"))
        assert head.header("date").endswith("GMT")
        client.send(
            b"POST /echo HTTP/1.1\r\nHost: t\r\nContent-Length: 3\r\nExpect: 100-continue\r\n\r\n"
        )
        interim = client.read_response()
        assert interim.status == 100
        client.send(b"abc")
        final = client.read_response()
        assert (final.status, final.body) == (200, b"abc")
        client.close()
        with httpx.Client(base_url=server.url, timeout=10) as http:
            assert http.get("/json").json()["method"] == "GET"
            assert http.get("/text").headers["content-type"].startswith("text/plain")
            info = http.get(
                "/headers?a=1", headers=[("Accept", "x/y"), ("X-Multi", "1"), ("X-Multi", "2")]
            ).json()
            assert info["accept"] == "x/y"
            assert info["x-multi"] == ["1", "2"]
            assert info["client"][0] == "127.0.0.1"
            assert info["http_version"] == "1.1"
            assert info["query"] == "a=1"
            assert http.get("/missing").status_code == 404


def test_handler_exception_gives_500_and_the_worker_lives_on():
    with RRProxy(PROBE, workers=1) as server:
        client = RawClient(server.port)
        client.send(b"GET /raise HTTP/1.1\r\nHost: t\r\n\r\n")
        failed = client.read_response()
        assert failed.status == 500
        assert b"Traceback" not in failed.body
        client.send(b"GET /bad HTTP/1.1\r\nHost: t\r\n\r\n")
        assert client.read_response().status == 500
        client.send(b"GET / HTTP/1.1\r\nHost: t\r\n\r\n")
        assert client.read_response().status == 200
        client.close()
        server.wait_for("RuntimeError: the handler failed on purpose")
        server.wait_for("handler returned builtins.int")
        assert get(server.port).header("x-worker-pid") == str(server.pids[1])


def test_streaming_response_that_raises_closes_the_connection():
    with RRProxy(PROBE, workers=1) as server:
        client = RawClient(server.port)
        client.send(b"GET /stream-raise HTTP/1.1\r\nHost: t\r\n\r\n")
        with pytest.raises(ConnectionError):
            client.read_response()
        server.wait_for("streaming response body raised")
        assert get(server.port).status == 200


def test_sync_handler_runs():
    with RRProxy("tests.apps.probe:sync_handler", workers=1) as server:
        assert get(server.port).body == b"sync worker=1"


def test_killed_worker_is_replaced_and_no_waiting_connection_is_lost():
    """A worker whose loop is blocked stops reading its channel; the connections the
    front handed it sit unread. SIGKILL it: every one of them must be re-handed and
    answered, a steady stream of requests must see no failure, and the slot must
    come back with a new process."""
    with RRProxy(PROBE, workers=2) as server:
        pids = dict(server.pids)
        blocker = RawClient(server.port)
        blocker.send(b"GET /block?s=30 HTTP/1.1\r\nHost: t\r\n\r\n")
        time.sleep(0.5)  # the blocked worker is now stuck in time.sleep

        results: list[object] = []
        answered_by: set[int] = set()
        lock = threading.Lock()

        def one_request() -> None:
            try:
                response = get(server.port, timeout=30)
                outcome: object = response.status
                with lock:
                    answered_by.add(int(response.header("x-worker-pid")))
            except OSError as exc:
                outcome = exc
            with lock:
                results.append(outcome)

        stop = threading.Event()

        def steady() -> None:
            while not stop.is_set():
                one_request()
                time.sleep(0.01)

        waiting = [threading.Thread(target=one_request) for _ in range(12)]
        for thread in waiting:
            thread.start()
        steady_thread = threading.Thread(target=steady)
        steady_thread.start()
        # The free worker answers its share; the rest wait inside the blocked one.
        deadline = time.monotonic() + 20
        while not answered_by and time.monotonic() < deadline:
            time.sleep(0.1)
        time.sleep(0.5)
        with lock:
            assert len(answered_by) == 1, answered_by
            (blocked_pid,) = set(pids.values()) - answered_by
        blocked_slot = next(slot for slot, pid in pids.items() if pid == blocked_pid)
        os.kill(blocked_pid, signal.SIGKILL)
        for thread in waiting:
            thread.join(20)
        time.sleep(0.5)
        stop.set()
        steady_thread.join(20)
        blocker.close()
        assert results, "no requests were made"
        failures = [r for r in results if r != 200]
        assert not failures, f"lost connections: {failures}"
        server.wait_for(rf"re-handing \d+ connection\(s\) that worker {blocked_slot}")
        match = server.wait_for(rf"worker {blocked_slot} ready \(pid (?!{blocked_pid}\))\d+\)")
        assert match
        # The replacement serves.
        seen = {get(server.port).header("x-worker-id") for _ in range(4)}
        assert seen == {"1", "2"}


def test_sigterm_lets_an_in_flight_request_finish():
    server = RRProxy(PROBE, workers=2).start()
    try:
        client = RawClient(server.port)
        client.send(b"GET /slow?s=1.5 HTTP/1.1\r\nHost: t\r\n\r\n")
        idle = RawClient(server.port)  # an idle keep-alive connection
        idle.send(b"GET / HTTP/1.1\r\nHost: t\r\n\r\n")
        assert idle.read_response().status == 200
        time.sleep(0.3)
        server.signal(signal.SIGTERM)
        response = client.read_response()
        assert response.status == 200
        assert response.body == b"slow done\n"
        assert response.header("connection") == "close"
        assert idle.at_eof()
        assert server.wait(20) == 0
        with pytest.raises(OSError):
            socket.create_connection(("127.0.0.1", server.port), timeout=2)
        assert "rrproxy: stopped" in server.output()
    finally:
        server.stop()


def test_second_sigint_stops_at_once():
    server = RRProxy(PROBE, workers=1).start()
    try:
        client = RawClient(server.port)
        client.send(b"GET /slow?s=20 HTTP/1.1\r\nHost: t\r\n\r\n")
        time.sleep(0.3)
        started = time.monotonic()
        server.signal(signal.SIGINT)
        server.wait_for("shutting down gracefully")
        server.signal(signal.SIGINT)
        assert server.wait(10) == 1
        assert time.monotonic() - started < 5
        _wait_gone(server.pids[1])
        client.close()
    finally:
        server.stop()


def test_debug_shows_the_traceback_in_500():
    with RRProxy("--debug", PROBE, workers=1) as server:
        response = get(server.port, "/raise")
        assert response.status == 500
        assert b"RuntimeError: the handler failed on purpose" in response.body


def test_sigint_stops_cleanly_and_workers_do_not_outlive_the_front():
    server = RRProxy(PROBE, workers=2).start()
    try:
        pids = list(server.pids.values())
        server.signal(signal.SIGINT)
        assert server.wait(20) == 0
        for pid in pids:
            _wait_gone(pid)
    finally:
        server.stop()
    orphaned = RRProxy(PROBE, workers=2).start()
    try:
        pids = list(orphaned.pids.values())
        orphaned.signal(signal.SIGKILL)  # the front dies without a word
        for pid in pids:
            _wait_gone(pid)  # workers see EOF on their channel and exit
    finally:
        orphaned.stop()


def _wait_gone(pid: int, timeout: float = 15.0) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        try:
            os.kill(pid, 0)
        except ProcessLookupError:
            return
        # A zombie (exited, not yet reaped by a dead parent) counts as gone.
        try:
            with open(f"/proc/{pid}/stat") as stat:
                if stat.read().split(") ", 1)[1].startswith("Z"):
                    return
        except OSError:
            return
        time.sleep(0.05)
    raise AssertionError(f"worker pid {pid} still running")
