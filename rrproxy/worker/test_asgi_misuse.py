"""ASGI apps that misuse send(), through test_connection.py's memory transport: each
gets a 500 (or a clean close once its head is out), and the connection serves the
next request."""

from __future__ import annotations

import sys
from typing import Any

import pytest
from wsproto.connection import Connection, ConnectionType
from wsproto.events import BytesMessage, CloseConnection, TextMessage

from ..config import WorkerConfig
from .asgi import ASGIAdapter
from .backend import Backend
from .connection import HTTPConnection
from .server import WorkerServer
from .test_connection import BACKENDS, GET, MemoryTransport, run_connection, serve
from .test_websocket import UPGRADE

START = {"type": "http.response.start", "status": 200}


def app_sending(*messages: dict[str, Any]) -> Any:
    async def app(scope: Any, receive: Any, send: Any) -> None:
        for message in messages:
            await send(message)

    return app


def answers(backend: Backend, app: Any) -> list[tuple[int, bytes]]:
    responses, _ = serve(backend, [GET, GET], adapter=ASGIAdapter(app), handler=app)
    return [(status, body) for status, _, body in responses]


@pytest.mark.parametrize("backend", BACKENDS, ids=lambda b: b.name)
@pytest.mark.parametrize(
    "messages",
    [
        # bytes(7) is seven NUL bytes: a 200 with a body of zeros went out.
        [START, {"type": "http.response.body", "body": 7}],
        # bytes(n) allocated n bytes before h11 refused the header.
        [{**START, "headers": [(b"content-length", 5)]}, {"type": "http.response.body"}],
        [{**START, "headers": [(b"x-a", "text")]}, {"type": "http.response.body"}],
    ],
    ids=["int-body", "int-header-value", "str-header-value"],
)
def test_a_field_that_is_not_bytes_is_a_500(backend: Backend, messages: Any) -> None:
    assert answers(backend, app_sending(*messages)) == [(500, b"500 Internal Server Error\n")] * 2


@pytest.mark.parametrize("backend", BACKENDS, ids=lambda b: b.name)
@pytest.mark.parametrize(
    "start",
    [{**START, "headers": [(b"content-length", b"1")]}, {**START, "status": 304}],
    ids=["over-content-length", "body-on-304"],
)
def test_a_first_chunk_the_core_refuses_is_a_500_not_an_empty_reply(
    backend: Backend, start: dict[str, Any]
) -> None:
    # The head was counted as sent when only built: the connection closed on the
    # client with nothing written at all.
    app = app_sending(start, {"type": "http.response.body", "body": b"xx", "more_body": True})
    assert answers(backend, app)[:1] == [(500, b"500 Internal Server Error\n")]


@pytest.mark.parametrize("backend", BACKENDS, ids=lambda b: b.name)
@pytest.mark.parametrize("error", [SystemExit, KeyboardInterrupt])
def test_sys_exit_in_an_app_is_a_500_not_a_dead_worker(
    backend: Backend, error: type[BaseException]
) -> None:
    # It escaped the connection task and ended the worker with every request on it.
    calls = []

    async def app(scope: Any, receive: Any, send: Any) -> None:
        calls.append(1)
        if len(calls) == 1:
            raise error
        ok = app_sending(START, {"type": "http.response.body", "body": b"ok"})
        await ok(scope, receive, send)

    assert answers(backend, app) == [(500, b"500 Internal Server Error\n"), (200, b"ok")]


def session_sending(backend: Backend, message: dict[str, Any]) -> list[Any]:
    """The events a WebSocket client gets from an app that accepts, then sends `message`."""

    async def app(scope: Any, receive: Any, send: Any) -> None:
        await receive()
        await send({"type": "websocket.accept"})
        if message["type"] == "raise":
            sys.exit(0)
        await send(message)

    transport = MemoryTransport(backend, [UPGRADE])
    run_connection(backend, transport, app, ASGIAdapter(app), ws_ping_interval=0)
    written = b"".join(transport.sent)
    head, _, rest = written.partition(b"\r\n\r\n")
    assert head.startswith(b"HTTP/1.1 101 ")
    client = Connection(ConnectionType.CLIENT)
    client.receive_data(rest)
    return list(client.events())


@pytest.mark.parametrize("backend", BACKENDS, ids=lambda b: b.name)
@pytest.mark.parametrize(
    "message",
    [{"type": "websocket.send", "bytes": 5}, {"type": "websocket.send", "text": 5}],
    ids=["int-bytes", "int-text"],
)
def test_a_websocket_payload_that_is_not_bytes_or_text_sends_no_zeros(
    backend: Backend, message: dict[str, Any]
) -> None:
    events = session_sending(backend, message)
    assert not any(isinstance(event, BytesMessage | TextMessage) for event in events)
    assert any(isinstance(event, CloseConnection) for event in events)


@pytest.mark.parametrize("backend", BACKENDS, ids=lambda b: b.name)
def test_sys_exit_in_a_websocket_app_closes_with_1011(backend: Backend) -> None:
    events = session_sending(backend, {"type": "raise"})
    assert [event.code for event in events if isinstance(event, CloseConnection)] == [1011]


@pytest.mark.parametrize("backend", BACKENDS, ids=lambda b: b.name)
def test_an_app_awaiting_disconnect_after_its_close_is_not_held_forever(backend: Backend) -> None:
    # The peer neither answers our close frame nor hangs up: the keepalive stops at the
    # close, and receive() waited for the peer forever.
    got: list[Any] = []

    async def app(scope: Any, receive: Any, send: Any) -> None:
        await receive()
        await send({"type": "websocket.accept"})
        await send({"type": "websocket.close", "code": 1000})
        got.append(await receive())

    transport = MemoryTransport(backend, [UPGRADE], hold=True)
    _, timed_out = run_connection(
        backend, transport, app, ASGIAdapter(app), 3, ws_ping_interval=0.2, ws_ping_timeout=0.5
    )
    assert timed_out is False
    assert got == [{"type": "websocket.disconnect", "code": 1006}]


@pytest.mark.parametrize("backend", BACKENDS, ids=lambda b: b.name)
@pytest.mark.parametrize("after", ["raise", "return"])
def test_a_response_cut_short_is_still_counted(backend: Backend, after: str) -> None:
    # Only whole responses reached the status counts and the access log: a 200 whose
    # app failed mid-body (or returned with more_body=True) was never seen.
    async def app(scope: Any, receive: Any, send: Any) -> None:
        await send(START)
        await send({"type": "http.response.body", "body": b"part", "more_body": True})
        if after == "raise":
            raise RuntimeError("mid-body")

    transport = MemoryTransport(backend, [GET])
    server, _ = run_connection(
        backend, transport, app, ASGIAdapter(app), 3, keep_alive=0.3, header_timeout=0.3
    )
    assert server.statuses == {200: 1}


@pytest.mark.parametrize("backend", BACKENDS, ids=lambda b: b.name)
@pytest.mark.parametrize(
    "fields",
    [{"code": 99999}, {"code": 5000}, {"code": 999}, {"code": 2000}, {"reason": b"bytes"}],
    ids=["99999", "5000", "999", "2000", "bytes-reason"],
)
def test_a_close_code_no_client_accepts_is_a_1011(backend: Backend, fields: dict[str, Any]) -> None:
    # 99999 or a bytes reason failed in wsproto after the session counted itself closed:
    # no close frame at all; 999, 2000 or 5000 went out, a protocol error for the client.
    events = session_sending(backend, {"type": "websocket.close", **fields})
    assert [event.code for event in events if isinstance(event, CloseConnection)] == [1011]


@pytest.mark.parametrize("backend", BACKENDS, ids=lambda b: b.name)
@pytest.mark.parametrize("code", [1000, 1001, 1008, 3000, 4999])
def test_close_codes_a_client_accepts_go_out(backend: Backend, code: int) -> None:
    events = session_sending(backend, {"type": "websocket.close", "code": code})
    assert [event.code for event in events if isinstance(event, CloseConnection)] == [code]


@pytest.mark.parametrize("backend", BACKENDS[1:], ids=lambda b: b.name)  # (asyncio's)
def test_a_cancelled_error_of_the_apps_own_is_a_500(backend: Backend) -> None:
    # An app that cancels a task and awaits it lets CancelledError out: asyncio took it
    # for the connection's cancellation, closed without a response and logged nothing.
    import asyncio

    calls = []

    async def app(scope: Any, receive: Any, send: Any) -> None:
        calls.append(1)
        if len(calls) == 1:
            task = asyncio.ensure_future(asyncio.sleep(10))
            await asyncio.sleep(0)
            task.cancel()
            await task
        ok = app_sending(START, {"type": "http.response.body", "body": b"ok"})
        await ok(scope, receive, send)

    assert answers(backend, app) == [(500, b"500 Internal Server Error\n"), (200, b"ok")]


class LeavingTransport(MemoryTransport):
    """A client that sent its pieces and left: client_gone() says so once they are read."""

    def client_gone(self) -> bool:
        return not self.inbound


@pytest.mark.parametrize("backend", BACKENDS, ids=lambda b: b.name)
def test_a_client_gone_before_accept_is_a_websocket_disconnect(backend: Backend) -> None:
    # No reader runs before the accept and the sweep skipped WebSockets: an app awaiting
    # receive() before accepting waited forever for a client long gone (uvicorn says
    # websocket.disconnect).
    got: list[Any] = []

    async def app(scope: Any, receive: Any, send: Any) -> None:
        got.append(await receive())
        got.append(await receive())

    config = WorkerConfig(app="test:app", ws_ping_interval=0)

    async def main() -> bool:
        server = WorkerServer(config, 1, app, True, backend, ASGIAdapter(app))
        connection = HTTPConnection(server)
        server.connection_opened(connection)
        async with backend.task_group() as tasks:
            tasks.start_soon(server.sweep_disconnects)
            with backend.move_on_after(4) as scope:
                await connection.run(LeavingTransport(backend, [UPGRADE]))  # type: ignore[arg-type]
            tasks.cancel()
        return scope.cancelled_caught

    assert backend.run(main) is False
    assert got == [{"type": "websocket.connect"}, {"type": "websocket.disconnect", "code": 1006}]
