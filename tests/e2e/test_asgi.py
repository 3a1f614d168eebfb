"""ASGI 3 apps (a real Starlette app, and raw apps for each rule) served for real."""

from __future__ import annotations

import ast
import os
import signal
import time

import httpx
import pytest
from websockets.exceptions import ConnectionClosed, InvalidStatus
from websockets.sync.client import connect

from tests.helpers import RawClient, RRProxy, get, run_cli

pytestmark = pytest.mark.usefixtures("each_loop")

STARLETTE = "workers.starlette_app:app"


@pytest.mark.parametrize("policy", ["rr", "none"])
def test_starlette_app_routes_forms_streaming_websockets_lifespan(policy: str):
    with (
        RRProxy("--policy", policy, STARLETTE, workers=2) as server,
        httpx.Client(base_url=server.url, timeout=10) as http,
    ):
        home = http.get("/")
        assert home.status_code == 200
        assert home.text.startswith("hello from lifespan (pid ")
        info = http.get("/info?x=1&y=%C3%A9").json()
        assert info["query"] == {"x": "1", "y": "é"}
        assert info["client"] == "127.0.0.1"
        assert info["started_in"] == info["pid"]  # lifespan ran in this worker
        pids = {http.get("/info", headers={"Connection": "close"}).json()["pid"] for _ in range(6)}
        assert pids <= set(server.pids.values())
        if policy == "rr":
            assert len(pids) == 2
        upload = http.post(
            "/upload",
            data={"name": "report"},
            files={"file": ("data.bin", os.urandom(300_000), "application/octet-stream")},
        ).json()
        assert upload == {"name": "report", "filename": "data.bin", "size": 300_000}
        assert http.post("/echo", content=b"abc" * 1000).content == b"abc" * 1000
        streamed = http.get("/stream?n=4")
        assert streamed.headers["transfer-encoding"] == "chunked"
        assert streamed.text == "0\n1\n2\n3\n"
        with connect(f"ws://127.0.0.1:{server.port}/ws", open_timeout=10) as ws:
            ws.send("hi")
            assert ws.recv(timeout=10) == "echo: hi"
            ws.send(b"\x01\x02\x03")
            assert ws.recv(timeout=10) == b"\x03\x02\x01"
            ws.ping().wait(10)
            ws.send("close-please")
            with pytest.raises(ConnectionClosed) as closed:
                ws.recv(timeout=10)
            assert closed.value.rcvd.code == 4001
        with pytest.raises(InvalidStatus) as denied:
            connect(f"ws://127.0.0.1:{server.port}/ws-denied", open_timeout=10)
        assert denied.value.response.status_code == 403


def test_scope_follows_the_spec():
    with RRProxy("--root-path", "/api", "tests.apps.asgi_rules:scope_echo", workers=1) as server:
        client = RawClient(server.port)
        client.send(
            b"POST /a%20b/c?q=1%202 HTTP/1.1\r\nHost: t\r\nX-Custom: Yes\r\n"
            b"Transfer-Encoding: chunked\r\n\r\n3\r\nabc\r\n2\r\nde\r\n0\r\n\r\n"
        )
        response = client.read_response()
        client.close()
    scope = ast.literal_eval(response.body.decode())
    assert scope["type"] == "http"
    assert scope["asgi"]["version"] == "3.0"
    assert scope["http_version"] == "1.1"
    assert scope["method"] == "POST"
    assert scope["scheme"] == "http"
    assert scope["path"] == "/api/a b/c"
    assert scope["raw_path"] == b"/api/a%20b/c"
    assert scope["query_string"] == b"q=1%202"
    assert scope["root_path"] == "/api"
    assert (b"x-custom", b"Yes") in scope["headers"]
    assert scope["client"][0] == "127.0.0.1"
    assert scope["server"] == ("127.0.0.1", server.port)
    assert scope["state"] == {}
    # The body streams: http.request messages with more_body, then a last one.
    assert scope["messages"][-1] == ("http.request", 0, False)
    assert sum(size for _, size, _ in scope["messages"]) == 5
    assert all(more for _, _, more in scope["messages"][:-1])


def test_body_limit_applies_to_asgi_apps():
    with RRProxy("--max-body-size", "1K", "tests.apps.asgi_rules:scope_echo", workers=1) as server:
        client = RawClient(server.port)
        client.send(b"POST / HTTP/1.1\r\nHost: t\r\nContent-Length: 5000\r\n\r\n")
        assert client.read_response().status == 413
        client.close()
        client = RawClient(server.port)
        client.send(
            b"POST / HTTP/1.1\r\nHost: t\r\nTransfer-Encoding: chunked\r\n\r\n"
            + (b"400\r\n" + b"x" * 1024 + b"\r\n") * 2
        )
        assert client.read_response().status == 413
        client.close()


@pytest.mark.parametrize(
    ("app", "log"),
    [
        ("no_response", "ASGI app returned without sending a response"),
        ("out_of_order", "http.response.body before http.response.start"),
    ],
)
def test_apps_that_break_the_rules_get_500_and_a_log_line(app: str, log: str):
    with RRProxy(f"tests.apps.asgi_rules:{app}", workers=1) as server:
        assert get(server.port).status == 500
        server.wait_for(log)
        assert get(server.port).status == 500  # the worker lives on


def test_an_app_that_breaks_mid_stream_gets_its_connection_closed():
    with RRProxy("tests.apps.asgi_rules:half_stream", workers=1) as server:
        client = RawClient(server.port)
        client.send(b"GET / HTTP/1.1\r\nHost: t\r\n\r\n")
        with pytest.raises(ConnectionError):
            client.read_response()
        server.wait_for("RuntimeError: broke mid-stream")


def test_app_sees_http_disconnect_when_the_client_leaves():
    with RRProxy("tests.apps.asgi_rules:waits_for_disconnect", workers=1) as server:
        client = RawClient(server.port)
        client.send(b"GET / HTTP/1.1\r\nHost: t\r\n\r\n")
        time.sleep(0.5)
        client.close()
        server.wait_for("app saw http.disconnect", timeout=5)


def test_lifespan_startup_failure_stops_rrproxy_with_the_apps_message():
    result = run_cli("--port", "0", "--workers", "2", "tests.apps.asgi_rules:lifespan_fails")
    assert result.returncode == 2
    assert "ASGI lifespan startup failed: database unreachable" in result.stderr


def test_interface_detection_and_forcing():
    with RRProxy("workers.asgi_hello:app", workers=1) as server:
        assert get(server.port).body == b"Hello, world!\n"
    with RRProxy("--interface", "native", "workers.asgi_hello:app", workers=1) as server:
        assert get(server.port).status == 500  # called as a native handler: it fails


def test_websocket_message_size_limit_and_1012_on_shutdown():
    with RRProxy("--ws-max-size", "1K", "--graceful-timeout", "1", STARLETTE, workers=1) as server:
        with connect(f"ws://127.0.0.1:{server.port}/ws", open_timeout=10) as ws:
            ws.send("x" * 2000)
            with pytest.raises(ConnectionClosed) as closed:
                ws.recv(timeout=10)
            assert closed.value.rcvd.code == 1009
        with connect(f"ws://127.0.0.1:{server.port}/ws", open_timeout=10) as ws:
            ws.send("still here")
            assert ws.recv(timeout=10) == "echo: still here"
            server.signal(signal.SIGTERM)
            with pytest.raises(ConnectionClosed) as closed:
                ws.recv(timeout=15)
            assert closed.value.rcvd.code == 1012
        assert server.wait(20) == 0


def _client_frame(opcode: int, payload: bytes) -> bytes:
    mask = b"\x01\x02\x03\x04"
    masked = bytes(b ^ mask[i % 4] for i, b in enumerate(payload))
    return bytes([0x80 | opcode, 0x80 | len(payload)]) + mask + masked


def test_websocket_frames_sent_with_the_upgrade_request_are_not_lost():
    """A client may send its first frames in the same packet as the handshake."""
    with RRProxy(STARLETTE, workers=1) as server:
        client = RawClient(server.port)
        client.send(
            b"GET /ws HTTP/1.1\r\nHost: t\r\nUpgrade: websocket\r\nConnection: Upgrade\r\n"
            b"Sec-WebSocket-Key: dGhlIHNhbXBsZSBub25jZQ==\r\nSec-WebSocket-Version: 13\r\n\r\n"
            + _client_frame(0x1, b"hi")
        )
        assert client.read_response().status == 101
        deadline = time.monotonic() + 10
        while b"echo: hi" not in client.buffer and time.monotonic() < deadline:
            client._fill()
        assert client.buffer[:2] == bytes([0x81, len(b"echo: hi")])
        assert client.buffer[2:10] == b"echo: hi"
        client.close()
