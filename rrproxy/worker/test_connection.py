"""The connection logic with plain bytes, no sockets and no processes: a memory
transport feeds a real HTTPConnection on each backend (trio, asyncio), and what it
writes is parsed back. Keep-alive, pipelining, 100-continue, limits, timeouts and an
ASGI app, identical on both loops."""

from __future__ import annotations

from collections import deque
from typing import Any

import pytest

from ..config import WorkerConfig
from ..protocol.http11 import NEED_DATA
from .asgi import ASGIAdapter
from .asyncio import make_backend
from .backend import Backend
from .connection import HTTPConnection
from .server import WorkerServer
from .trio import BACKEND as TRIO

BACKENDS = [TRIO, make_backend("asyncio")]


class MemoryTransport:
    """What the client sends, in pieces; what the server writes, collected. After
    the last piece: EOF, or (hold=True) silence until the server gives up."""

    def __init__(self, backend: Backend, pieces: list[bytes], hold: bool = False) -> None:
        self.backend = backend
        self.inbound = deque(pieces)
        self.hold = hold
        self.sent: list[bytes] = []
        self.client = ("127.0.0.1", 40000)
        self.closed = False
        self.first_reads = 0

    def server_address(self) -> tuple[str, int]:
        return ("127.0.0.1", 8000)

    async def receive(self) -> bytes:
        await self.backend.checkpoint()
        if self.inbound:
            self.first_reads += 1
            return self.inbound.popleft()
        if self.hold:
            await self.backend.event().wait()  # until a deadline cancels us
        return b""

    async def send(self, data: bytes) -> None:
        self.sent.append(data)

    def client_gone(self) -> bool:
        return False

    def shutdown_write(self) -> None:
        pass

    def close(self) -> None:
        self.closed = True


def parse_responses(data: bytes) -> list[tuple[int, dict[bytes, bytes], bytes]]:
    """Responses in a byte stream (Content-Length or chunked bodies; 1xx have none)."""
    out = []
    at = 0
    while at < len(data):
        end = data.index(b"\r\n\r\n", at)
        lines = data[at:end].split(b"\r\n")
        at = end + 4
        status = int(lines[0].split()[1])
        headers = dict(line.lower().split(b": ", 1) for line in lines[1:])
        body = b""
        if status >= 200:
            if headers.get(b"transfer-encoding") == b"chunked":
                while True:
                    line_end = data.index(b"\r\n", at)
                    size = int(data[at:line_end], 16)
                    body += data[line_end + 2 : line_end + 2 + size]
                    at = line_end + 4 + size
                    if size == 0:
                        break
            else:
                length = int(headers.get(b"content-length", b"0"))
                body, at = data[at : at + length], at + length
        out.append((status, headers, body))
    return out


async def echo(request: Any) -> Any:
    from ..native import Response

    body = await request.body()
    return Response(200, body or request.path.encode(), [("x-method", request.method)])


def run_connection(
    backend: Backend,
    transport: MemoryTransport,
    handler: Any = echo,
    adapter: Any = None,
    timeout: float = 5.0,
    **config: Any,
) -> tuple[WorkerServer, bool]:
    """Serve one connection over `transport` with a real WorkerServer (its timeouts
    running) for at most `timeout` seconds: the server, and whether the time ran out."""
    server_config = WorkerConfig(app="test:app", **config)

    async def main() -> tuple[WorkerServer, bool]:
        server = WorkerServer(server_config, 1, handler, True, backend, adapter)
        connection = HTTPConnection(server)
        server.connection_opened(connection)
        async with backend.task_group() as tasks:
            tasks.start_soon(server.timeouts.run)
            with backend.move_on_after(timeout) as scope:
                # A test double: no sendfile (unless a subclass has one), client never None.
                await connection.run(transport)  # type: ignore[arg-type]
            tasks.cancel()
        return server, scope.cancelled_caught

    return backend.run(main)


def serve(
    backend: Backend,
    pieces: list[bytes],
    handler: Any = echo,
    hold: bool = False,
    adapter: Any = None,
    **config: Any,
) -> tuple[list[tuple[int, dict[bytes, bytes], bytes]], MemoryTransport]:
    """run_connection() with short keep-alive and header timeouts, and the responses
    it wrote parsed."""
    settings = {"keep_alive": 0.3, "header_timeout": 0.3, **config}
    transport = MemoryTransport(backend, pieces, hold)
    run_connection(backend, transport, handler, adapter, **settings)
    return parse_responses(b"".join(transport.sent)), transport


GET = b"GET /a HTTP/1.1\r\nHost: x\r\n\r\n"
CHUNKED = b"POST / HTTP/1.1\r\nHost: x\r\nTransfer-Encoding: chunked\r\n\r\n"


@pytest.mark.parametrize("backend", BACKENDS, ids=lambda b: b.name)
def test_keep_alive_and_pipelining(backend: Backend) -> None:
    post = b"POST /b HTTP/1.1\r\nHost: x\r\nContent-Length: 5\r\n\r\nhello"
    responses, transport = serve(backend, [GET, post + GET])
    assert [(status, body) for status, _, body in responses] == [
        (200, b"/a"),
        (200, b"hello"),
        (200, b"/a"),
    ]
    assert all(b"connection" not in headers for _, headers, _ in responses)
    assert transport.closed


@pytest.mark.parametrize("backend", BACKENDS, ids=lambda b: b.name)
def test_a_request_split_at_every_byte_is_the_same_request(backend: Backend) -> None:
    data = (
        b"POST /b HTTP/1.1\r\nHost: x\r\nTransfer-Encoding: chunked\r\n\r\n5\r\nhello\r\n0\r\n\r\n"
    )
    responses, _ = serve(backend, [data[i : i + 1] for i in range(len(data))])
    assert [(s, b) for s, _, b in responses] == [(200, b"hello")]


@pytest.mark.parametrize("backend", BACKENDS, ids=lambda b: b.name)
def test_100_continue_goes_out_before_the_body_is_read(backend: Backend) -> None:
    head = b"POST /c HTTP/1.1\r\nHost: x\r\nContent-Length: 3\r\nExpect: 100-continue\r\n\r\n"
    responses, transport = serve(backend, [head, b"abc"])
    assert transport.sent[0].startswith(b"HTTP/1.1 100 ")
    assert [(s, b) for s, _, b in responses] == [(100, b""), (200, b"abc")]


@pytest.mark.parametrize("backend", BACKENDS, ids=lambda b: b.name)
@pytest.mark.parametrize(
    ("request_bytes", "status"),
    [
        (b"POST / HTTP/1.1\r\nHost: x\r\nContent-Length: 2000\r\n\r\n", 413),
        (b"GET / HTTP/1.1\r\nHost: x\r\nBig: " + b"a" * 2000 + b"\r\n\r\n", 431),
        (CHUNKED + (b"100\r\n" + b"a" * 256 + b"\r\n") * 4, 413),
        (CHUNKED[:-2] + b"Content-Length: 5\r\n\r\n0\r\n\r\n" + GET, 400),
        (b"CONNECT x:443 HTTP/1.1\r\nHost: x:443\r\n\r\n", 501),
    ],
)  # fmt: skip
def test_limits_and_rejections_close_the_connection(
    backend: Backend, request_bytes: bytes, status: int
) -> None:
    chunks = (
        [request_bytes[:1100], request_bytes[1100:]]
        if len(request_bytes) > 1100
        else [request_bytes]
    )
    responses, _ = serve(backend, chunks, max_header_size=1024, max_body_size=1000)
    assert [s for s, _, _ in responses] == [status]
    assert responses[0][1][b"connection"] == b"close"


@pytest.mark.parametrize("backend", BACKENDS, ids=lambda b: b.name)
@pytest.mark.parametrize(
    "request_bytes",
    [
        b"GARBAGE\r\n\r\n",
        b"GET / HTTP/1.1\r\nHost: t\r\nBad Header\r\n\r\n",
        b"GET / HTTP/9.9\r\nHost: t\r\n\r\n",
        b"GET / HTTP/1.1\r\nContent-Length: 1\r\nContent-Length: 2\r\n\r\n",
        CHUNKED + b"zz\r\nxx\r\n",
    ],
    ids=["request-line", "header", "version", "conflicting-length", "chunk-size"],
)
def test_malformed_requests_get_an_error_and_close(backend: Backend, request_bytes: bytes) -> None:
    calls: list[str] = []

    async def handler(request: Any) -> Any:
        calls.append(request.path)
        await request.body()
        return "never"

    responses, transport = serve(backend, [request_bytes], handler=handler)
    assert [s for s, _, _ in responses] in ([400], [505])
    assert responses[0][1][b"connection"] == b"close"
    assert transport.closed
    assert calls in ([], ["/"])  # a bad chunk is found only once the handler reads


@pytest.mark.parametrize("backend", BACKENDS, ids=lambda b: b.name)
def test_a_body_exactly_at_the_limit_is_served(backend: Backend) -> None:
    post = b"POST /e HTTP/1.1\r\nHost: x\r\nContent-Length: 1000\r\n\r\n" + b"y" * 1000
    responses, _ = serve(backend, [post, GET], max_body_size=1000)
    assert [(s, b) for s, _, b in responses] == [(200, b"y" * 1000), (200, b"/a")]


@pytest.mark.parametrize("backend", BACKENDS, ids=lambda b: b.name)
def test_a_declared_oversize_body_is_refused_before_the_handler_runs(backend: Backend) -> None:
    calls: list[str] = []

    async def handler(request: Any) -> Any:
        calls.append(request.path)
        return "never"

    head = b"POST /e HTTP/1.1\r\nHost: x\r\nContent-Length: 5000\r\n\r\n"
    # Only the head, then silence: the 413 must not wait for the body.
    responses, _ = serve(backend, [head], handler=handler, hold=True, max_body_size=1000)
    assert [s for s, _, _ in responses] == [413]
    assert calls == []


@pytest.mark.parametrize("backend", BACKENDS, ids=lambda b: b.name)
def test_an_idle_connection_is_closed_quietly_and_a_slow_head_gets_408(backend: Backend) -> None:
    responses, transport = serve(backend, [GET], hold=True)
    assert [s for s, _, _ in responses] == [200]  # then the keep-alive expired: no 408
    assert transport.closed
    responses, _ = serve(backend, [b"GET / HTTP/1.1\r\nHo"], hold=True)
    assert [s for s, _, _ in responses] == [408]


async def asgi_app(scope: Any, receive: Any, send: Any) -> None:
    assert scope["type"] == "http"
    body = b""
    while True:
        message = await receive()
        body += message.get("body", b"")
        if not message.get("more_body"):
            break
    await send({"type": "http.response.start", "status": 201, "headers": [(b"x-a", b"1")]})
    await send({"type": "http.response.body", "body": body[:2], "more_body": True})
    await send({"type": "http.response.body", "body": body[2:]})
    assert (await receive())["type"] == "http.disconnect"


@pytest.mark.parametrize("backend", BACKENDS, ids=lambda b: b.name)
def test_an_asgi_app_streams_its_response_the_same_on_both_loops(backend: Backend) -> None:
    post = b"POST /x HTTP/1.1\r\nHost: x\r\nContent-Length: 5\r\n\r\nhello"
    responses, _ = serve(backend, [post, GET], adapter=ASGIAdapter(asgi_app), handler=asgi_app)
    assert [(s, b) for s, _, b in responses] == [(201, b"hello"), (201, b"")]
    assert responses[0][1][b"transfer-encoding"] == b"chunked"


def test_scope_deadline_is_reset_while_the_app_works() -> None:
    """The connection's one scope never times the app out: a 0.5 s handler with a
    0.3 s header timeout still answers."""

    async def slow(request: Any) -> Any:
        await TRIO.sleep(0.5)
        return "done"

    responses, _ = serve(TRIO, [GET], handler=slow)
    assert [(s, b) for s, _, b in responses] == [(200, b"done")]


@pytest.mark.parametrize("backend", BACKENDS, ids=lambda b: b.name)
def test_requests_ahead_of_a_bad_pipelined_one_are_answered(backend: Backend) -> None:
    calls: list[str] = []

    async def count(request: Any) -> Any:
        calls.append(request.path)
        return "ok"

    bad = b"GET /bad HTTP/1.1\nHost: x\n\n"
    responses, _ = serve(backend, [GET + GET + bad], handler=count)
    assert [s for s, _, _ in responses] == [200, 200, 400]
    assert calls == ["/a", "/a"]


@pytest.mark.parametrize("backend", BACKENDS, ids=lambda b: b.name)
def test_empty_lines_cannot_keep_a_connection_open(backend: Backend) -> None:
    """CRLFs before a request line are ignored, but they start the header timeout:
    a client sending only them is cut off, not kept alive forever."""
    responses, transport = serve(backend, [GET, b"\r\n", b"\r\n"], hold=True)
    assert [s for s, _, _ in responses] == [200, 408]
    assert transport.closed


def test_bytes_sent_with_sendfile_are_counted_by_h11() -> None:
    from ..protocol.http11 import InvalidResponse, Limits, ServerConnection

    core = ServerConnection(Limits())
    core.receive_data(GET)
    assert core.next_request() is not NEED_DATA
    core.response(200, [(b"content-length", b"1000")], None)
    core.sent_elsewhere(1000)
    assert core.end() == b""
    chunked = ServerConnection(Limits())
    chunked.receive_data(GET)
    chunked.next_request()
    chunked.response(200, [], None)
    with pytest.raises(InvalidResponse):
        chunked.sent_elsewhere(10)
