"""ASGI 3: the HTTP cycle and lifespan, on the worker's connection, for any backend.

One HTTPCycle per request gives the app `receive` and `send`; the response head and
the first (often only) body chunk go out in one write, with Content-Length when the
app sends the whole body at once (chunked otherwise).
"""

from __future__ import annotations

import logging
from collections.abc import Awaitable, Callable, MutableMapping
from typing import TYPE_CHECKING, Any
from urllib.parse import unquote

import h11

from ..errors import BodyTooLarge, ClientDisconnected, MalformedBody
from ..protocol.http import has_header
from ..protocol.http11 import InvalidResponse
from ..state.backend import StateFull, StateUnavailable
from .backend import Backend, Event
from .native_response import internal_error, is_app_error, send_response

if TYPE_CHECKING:
    from .connection import HTTPConnection

log = logging.getLogger("rrproxy.asgi")

ASGI_VERSION = {"version": "3.0", "spec_version": "2.4"}
Scope = MutableMapping[str, Any]
Message = MutableMapping[str, Any]
ASGIApp = Callable[
    [Scope, Callable[[], Awaitable[Message]], Callable[[Message], Awaitable[None]]], Awaitable[None]
]


class ProtocolViolation(RuntimeError):
    """The app sent ASGI messages out of order or malformed."""


def octets(value: Any, what: str) -> bytes:
    """A bytes-like field of an ASGI message as bytes, else ProtocolViolation (bytes(n) of an
    int is n NUL bytes: a Content-Length given as an int allocated that many)."""
    if isinstance(value, bytes):
        return value
    if isinstance(value, bytearray | memoryview):
        return bytes(value)
    raise ProtocolViolation(f"{what} must be bytes, not {type(value).__name__}")


def header_list(headers: Any) -> list[tuple[bytes, bytes]]:
    """An ASGI message's headers, as (lowercased name, value) bytes."""
    return [(octets(k, "a header name").lower(), octets(v, "a header value")) for k, v in headers]


ASYNCIO_HINT = (
    "the app uses asyncio, which does not run on trio: start rrproxy with "
    "--loop asyncio (or --loop auto, the default for ASGI apps)"
)


def asyncio_on_trio(backend: Backend, exc: BaseException) -> bool:
    """Whether `exc` is what asyncio code raises when it runs on trio (Django's
    asyncio.gather, Quart's get_running_loop, asyncpg...)."""
    if backend.name != "trio":
        return False
    text = str(exc)
    if "no running event loop" in text or "unrecognized yield message" in text:
        return True
    tb = exc.__traceback__
    while tb is not None:
        if "/asyncio/" in tb.tb_frame.f_code.co_filename:
            return True
        tb = tb.tb_next
    return False


def http_scope(connection: HTTPConnection, request: h11.Request, kind: str) -> dict[str, Any]:
    """The ASGI scope of a request (`kind` is "http" or "websocket"): path and root_path split as
    uvicorn does, client and scheme from the PROXY header or trusted forwarded headers, the
    lifespan state copied in."""
    server = connection.server
    config = server.config
    raw_path, _, query = request.target.partition(b"?")
    if raw_path[:1] != b"/" and b"://" in raw_path:
        # The absolute form (RFC 9112 §3.2.2): the path is what follows the authority.
        authority_and_path = raw_path.split(b"://", 1)[1]
        slash = authority_and_path.find(b"/")
        raw_path = authority_and_path[slash:] if slash >= 0 else b"/"
    root = config.root_path
    path = unquote(raw_path.decode("latin-1"))
    tls = server.tls_context is not None
    scheme = ("https" if tls else "http") if kind == "http" else ("wss" if tls else "ws")
    if connection.trust_forwarded:
        for name, value in connection.core.headers:
            if name == b"x-forwarded-proto" and value.lower() in (b"https", b"wss"):
                scheme = "https" if kind == "http" else "wss"
    return {
        "type": kind,
        "asgi": ASGI_VERSION,
        "http_version": request.http_version.decode("ascii"),
        "method": request.method.decode("ascii"),
        "scheme": scheme,
        "path": root + path if root else path,
        "raw_path": root.encode() + raw_path if root else raw_path,
        "query_string": query,
        "root_path": root,
        "headers": list(connection.core.headers),
        "client": connection.effective_client(request),
        "server": connection.server_address(),
        "state": dict(server.asgi_state),
    }


class HTTPCycle:
    """One request/response exchange with an ASGI app."""

    __slots__ = (
        "_done",
        "bad_request",
        "body_done",
        "body_sent",
        "complete",
        "connection",
        "head",
        "head_sent",
        "headers",
        "refused",
        "started",
        "status",
    )

    def __init__(self, connection: HTTPConnection, head: bool) -> None:
        self.connection = connection
        self.head = head
        self.started = False
        self.head_sent = False
        self.complete = False
        self.body_done = False
        self.status = 0
        self.headers: list[tuple[bytes, bytes]] = []
        self.body_sent = 0
        #: The core refused the app's head (nothing went out): send_error(written=False).
        self.refused = False
        self._done: Event | None = None
        #: The request body broke HTTP framing: the status to answer (the app is
        #: told http.disconnect).
        self.bad_request = 0

    def client_gone(self) -> None:
        """The disconnect sweep saw the client leave: receive() says so."""
        self.body_done = True
        self._finished_event().set()

    def _finished_event(self) -> Event:
        if self._done is None:
            self._done = self.connection.server.backend.event()
        return self._done

    async def receive(self) -> Message:
        """The app's receive(): the next piece of the request body, then http.disconnect once the
        client has gone (or the response is sent)."""
        connection = self.connection
        if not self.body_done:
            try:
                chunk = await connection.read_body_chunk()
            except ClientDisconnected:
                self.body_done = True
                return {"type": "http.disconnect"}
            except MalformedBody as exc:
                # As uvicorn: a malformed body is the server's to answer, the app
                # only hears that the client is gone.
                self.bad_request = exc.status
                self.body_done = True
                return {"type": "http.disconnect"}
            if chunk is not None:
                return {"type": "http.request", "body": chunk, "more_body": True}
            self.body_done = True
            return {"type": "http.request", "body": b"", "more_body": False}
        if not self.complete:
            # Nothing more to read: the next event is the client leaving or the end
            # of the response.
            await self._finished_event().wait()
        return {"type": "http.disconnect"}

    async def send(self, message: Message) -> None:
        """The app's send(): http.response.start, then http.response.body pieces. Raises
        ProtocolViolation for messages out of order."""
        kind = message["type"]
        if kind == "http.response.start":
            if self.started:
                raise ProtocolViolation("http.response.start sent twice")
            self.started = True
            self.status = int(message["status"])
            self.headers = header_list(message.get("headers", ()))
            return
        if kind != "http.response.body":
            raise ProtocolViolation(f"unexpected ASGI message {kind!r} in an HTTP cycle")
        if not self.started:
            raise ProtocolViolation("http.response.body before http.response.start")
        if self.complete:
            raise ProtocolViolation("http.response.body after the response ended")
        body = octets(message.get("body", b""), "http.response.body's body")
        more = bool(message.get("more_body", False))
        connection = self.connection
        core = connection.core
        first = not self.head_sent
        try:
            if first:
                whole = not more and not has_header(self.headers, b"transfer-encoding")
                data = core.response(
                    self.status,
                    self.headers,
                    body if whole else None,
                    head=self.head,
                    close=connection.server.draining,
                )
                if whole:
                    self.body_sent = 0 if self.head else len(body)
                    self.complete = True
                elif body and not self.head:
                    data += core.chunk(body)
                    self.body_sent += len(body)
            else:
                data = b""
                if body and not self.head:
                    data = core.chunk(body)
                    self.body_sent += len(body)
            if not more and not self.complete:
                data += core.end()
                self.complete = True
        except InvalidResponse as exc:
            # Nothing of this message has been written: if it held the head, the
            # client can still get a 500 instead of a connection closed on it.
            self.refused = first
            raise ProtocolViolation(f"invalid response: {exc}") from None
        self.head_sent = True
        if data:
            await connection.send(data)
        if self.complete:
            self._finished_event().set()


class ASGIAdapter:
    """Serves requests with an ASGI 3 app (HTTP; WebSocket upgrades)."""

    def __init__(self, app: ASGIApp) -> None:
        self.app = app

    async def serve(self, connection: HTTPConnection, request: h11.Request) -> bool:
        """Run the app for one request (or a WebSocket session); True if the connection may carry
        another request."""
        from .websocket import WebSocketSession, is_websocket_upgrade

        if is_websocket_upgrade(request, connection.core.headers):
            await WebSocketSession(connection, request).run()
            return False
        return await run_http(connection, request)


async def run_http(connection: HTTPConnection, request: h11.Request) -> bool:
    """Serve one request with the ASGI app; True if the connection may continue."""
    cycle = HTTPCycle(connection, request.method == b"HEAD")
    connection.asgi_cycle = cycle
    try:
        await connection.server.handler(
            http_scope(connection, request, "http"), cycle.receive, cycle.send
        )
    except BodyTooLarge:
        if not cycle.head_sent:
            return await connection.send_error(413)
        return False
    except ClientDisconnected:
        raise
    except BaseException as exc:
        backend = connection.server.backend
        if not is_app_error(backend, exc):
            raise  # the loop's cancellation
        where = f"{request.method.decode()} {request.target.decode('latin-1')}"
        if isinstance(exc, ProtocolViolation):
            log.error("ASGI app broke the protocol on %s: %s", where, exc)
        elif asyncio_on_trio(backend, exc):
            log.error(
                "ASGI app raised on %s: %s: %s (%s)", where, type(exc).__name__, exc, ASYNCIO_HINT
            )
        else:
            log.exception("ASGI app raised on %s", where)
        if not cycle.head_sent:
            if cycle.refused:
                return await connection.send_error(500, written=False)
            if isinstance(exc, StateUnavailable):
                return await connection.send_error(503)
            if isinstance(exc, StateFull):
                return await connection.send_error(507)
            response = internal_error(connection, exc)
            return await send_response(connection, response, cycle.head)
        # The response is (partly) out: closing tells the client; it is still counted.
        connection.finished(cycle.status, cycle.body_sent)
        return False
    finally:
        connection.asgi_cycle = None
    if cycle.bad_request:
        if not cycle.head_sent:
            return await connection.send_error(cycle.bad_request)
        return False
    if not cycle.head_sent:
        log.error(
            "ASGI app returned without sending a response to %s %s",
            request.method.decode(),
            request.target.decode("latin-1"),
        )
        return await connection.send_error(500)
    if not cycle.complete:
        log.error("ASGI app returned before finishing its response (more_body=True)")
    connection.finished(cycle.status, cycle.body_sent)
    return cycle.complete


__all__ = ["ASGIAdapter", "HTTPCycle", "run_http"]
