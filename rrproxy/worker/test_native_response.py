"""A native handler's response that cannot be written (a header value that is not
latin-1, a status or header of the wrong type) is answered 500 and logged, and the
connection closes cleanly. Plain bytes through test_connection.py's memory transport."""

from __future__ import annotations

import logging
from http import HTTPStatus
from typing import Any

import pytest

from ..native import Response
from .backend import Backend
from .test_connection import BACKENDS, GET, MemoryTransport, run_connection, serve

BAD_RESPONSES = {
    "non-latin-1 header value": lambda: Response(200, b"ok", [("x-name", "caf\u00e9 \u2603")]),
    "non-latin-1 header name": lambda: Response(200, b"ok", [("x-\u2603", "1")]),
    "status as a string": lambda: Response("200"),  # type: ignore[arg-type]
    "status as None": lambda: Response(None),  # type: ignore[arg-type]
    "header name not a string": lambda: Response(200, b"ok", [(1, "x")]),  # type: ignore[list-item]
    "header not a pair": lambda: Response(200, b"ok", [("x-a", "1", "2")]),  # type: ignore[list-item]
    "invalid status": lambda: Response(1000),
    "body of no body type": lambda: Response(200, 5),  # type: ignore[arg-type]
    "str body with a lone surrogate": lambda: Response(200, "\ud800"),
}


@pytest.mark.parametrize("backend", BACKENDS, ids=lambda b: b.name)
@pytest.mark.parametrize("make", BAD_RESPONSES.values(), ids=BAD_RESPONSES.keys())
def test_a_response_that_cannot_be_written_is_a_500(
    backend: Backend, make: Any, caplog: pytest.LogCaptureFixture
) -> None:
    async def handler(request: Any) -> Any:
        return make()

    with caplog.at_level(logging.ERROR, logger="rrproxy.worker"):
        # A second request behind it: the connection closes after the 500 instead.
        responses, transport = serve(backend, [GET + GET], handler=handler)
    assert [status for status, _, _ in responses] == [500]
    assert responses[0][1][b"connection"] == b"close"
    assert transport.closed
    assert any("invalid response" in record.getMessage() for record in caplog.records)


@pytest.mark.parametrize("backend", BACKENDS, ids=lambda b: b.name)
def test_an_int_enum_status_is_still_a_status(backend: Backend) -> None:
    async def handler(request: Any) -> Any:
        return Response(HTTPStatus.CREATED, "made", {"x-a": "fine"})

    responses, _ = serve(backend, [GET], handler=handler)
    assert [(status, body) for status, _, body in responses] == [(201, b"made")]
    assert responses[0][1][b"x-a"] == b"fine"


@pytest.mark.parametrize("backend", BACKENDS, ids=lambda b: b.name)
def test_the_next_connection_is_served_after_a_bad_response(backend: Backend) -> None:
    async def handler(request: Any) -> Any:
        if request.path == "/bad":
            return Response(200, b"", [("x-bad", "\u2603")])
        return "fine"

    bad = b"GET /bad HTTP/1.1\r\nHost: x\r\n\r\n"
    responses, _ = serve(backend, [bad], handler=handler)
    assert [status for status, _, _ in responses] == [500]
    responses, _ = serve(backend, [GET], handler=handler)
    assert [(status, body) for status, _, body in responses] == [(200, b"fine")]


@pytest.mark.parametrize("backend", BACKENDS, ids=lambda b: b.name)
@pytest.mark.parametrize("exit_with", [SystemExit(3), KeyboardInterrupt()], ids=repr)
def test_a_handler_that_exits_gets_a_500_and_the_worker_serves_on(
    backend: Backend, exit_with: BaseException
) -> None:
    async def handler(request: Any) -> Any:
        if request.path == "/exit":
            raise exit_with
        return "fine"

    exits = b"GET /exit HTTP/1.1\r\nHost: x\r\n\r\n"
    responses, _ = serve(backend, [exits + GET], handler=handler)
    assert [(status, body) for status, _, body in responses][1:] == [(200, b"fine")]
    assert responses[0][0] == 500


@pytest.mark.parametrize("backend", BACKENDS, ids=lambda b: b.name)
def test_a_streamed_body_that_exits_closes_the_connection(backend: Backend) -> None:
    async def chunks() -> Any:
        yield b"part"
        raise SystemExit(1)

    async def handler(request: Any) -> Any:
        return Response(200, chunks())

    transport = MemoryTransport(backend, [GET + GET])
    run_connection(backend, transport, handler, keep_alive=0.3)
    sent = b"".join(transport.sent)
    # The head and the first chunk, then the connection closes: no final chunk (the
    # client sees the body was cut short) and no answer to the second request.
    assert sent.startswith(b"HTTP/1.1 200 ")
    assert sent.endswith(b"4\r\npart\r\n")
    assert sent.count(b"HTTP/1.1") == 1
    assert transport.closed


@pytest.mark.parametrize("backend", BACKENDS[1:], ids=lambda b: b.name)  # (asyncio's)
def test_a_cancelled_error_of_the_handlers_own_is_a_500(backend: Backend) -> None:
    # A handler that cancels a task and awaits it lets CancelledError out; its own
    # task is not being cancelled, so it is the handler's error, as for ASGI apps.
    import asyncio

    async def handler(request: Any) -> Any:
        if request.path == "/cancels":
            task = asyncio.ensure_future(asyncio.sleep(10))
            await asyncio.sleep(0)
            task.cancel()
            await task
        return "fine"

    cancels = b"GET /cancels HTTP/1.1\r\nHost: x\r\n\r\n"
    responses, _ = serve(backend, [cancels + GET], handler=handler)
    assert [(status, body) for status, _, body in responses][1:] == [(200, b"fine")]
    assert responses[0][0] == 500
