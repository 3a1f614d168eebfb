"""One HTTP/1.1 connection: the h11 loop around the user's handler.

Keep-alive, pipelining (h11 buffers the next request; we answer in order), chunked
and Content-Length bodies, HEAD, Expect: 100-continue, and the timeouts and limits
that keep one client from holding a worker.

The socket is driven directly (nonblocking calls, trio only waits on EAGAIN): one
syscall per read and per response, no extra scheduling on the hot path.
"""

from __future__ import annotations

import logging
import socket
from collections.abc import Callable
from typing import TYPE_CHECKING, Any

import h11
import trio

from ..native import (
    BodyTooLarge,
    ClientDisconnected,
    Headers,
    InvalidResponse,
    MalformedBody,
    Request,
    Response,
    coerce_response,
)
from ..protocol.framing import FramingError, RequestFraming
from ..protocol.http import (
    declared_length,
    encode_header_pairs,
    error_body,
    has_header,
    http_date,
    reason,
)
from ..protocol.proxy import ProxyHeaderError, forwarded_client, trusted
from ..protocol.proxy import parse as parse_proxy_header
from ..state import StateFull, StateUnavailable
from .asgi import run_http
from .websocket import WebSocketSession, is_websocket_upgrade

if TYPE_CHECKING:
    from .server import WorkerServer

#: When draining, an idle keep-alive connection gets this long to send one more
#: request (answered with Connection: close) before it is closed: a busy client then
#: never sees its connection vanish under a request it is just sending.
DRAIN_IDLE_GRACE = 1.0

log = logging.getLogger("rrproxy.worker")
access_log = logging.getLogger("rrproxy.access")

RECV_SIZE = 64 * 1024
#: After this many requests served back to back without waiting, yield to the other
#: tasks once: a pipelining client must not monopolise the worker's loop.
_FAIRNESS_BURST = 16
#: Bounds of the "lingering close" after an error response: read and discard what the
#: client still sends, so closing does not turn into a RST that destroys our answer.
_LINGER_SECONDS = 1.0
_LINGER_BYTES = 1024 * 1024

_VERSIONS = (b"1.1", b"1.0")
_H11_DONE = h11.DONE
#: The request has been read whole (after an Upgrade request, h11 waits in
#: MIGHT_SWITCH_PROTOCOL until our response says whether it switches).
_REQUEST_READ = (h11.DONE, h11.MIGHT_SWITCH_PROTOCOL)
_NEED_DATA = h11.NEED_DATA


class HTTPConnection:
    __slots__ = (
        "_body_done",
        "_body_limit",
        "_body_received",
        "_on_first_read",
        "_server_address",
        "asgi_cycle",
        "client",
        "conn",
        "framing",
        "handler_scope",
        "handler_started",
        "idle_scope",
        "request_line",
        "requests",
        "server",
        "sock",
        "trust_forwarded",
        "websocket",
    )

    def __init__(
        self,
        sock: socket.socket,
        server: WorkerServer,
        on_first_read: Callable[[], None] | None = None,
    ) -> None:
        sock.setblocking(False)
        # Trap: a socket rebuilt from a received fd may not carry its protocol, and
        # without TCP_NODELAY, Nagle plus delayed ACK adds ~40 ms per response.
        try:
            sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
        except OSError:
            pass  # not TCP (a unix socket in tests): nothing to tune
        self.sock = sock
        self.server = server
        config = server.config
        self.conn = h11.Connection(h11.SERVER, max_incomplete_event_size=config.max_header_size)
        #: Every byte from the client passes the strict framing rules before h11.
        self.framing = RequestFraming(
            config.max_header_size, config.max_headers, config.max_body_size
        )
        self._on_first_read = on_first_read
        self.idle_scope: trio.CancelScope | None = None
        #: Set while the handler runs, so the worker's disconnect sweep can cancel it.
        self.handler_scope: trio.CancelScope | None = None
        self.handler_started = 0.0
        #: (method, target) of the request being answered, for the access log.
        self.request_line: tuple[bytes, bytes] | None = None
        self.requests = 0
        self.asgi_cycle: Any = None
        self.websocket: Any = None
        self._server_address: tuple[str, int] | None = None
        self._body_limit = server.config.max_body_size
        self._body_received = 0
        self._body_done = False
        try:
            peer = sock.getpeername()
            self.client: tuple[str, int] | None = (peer[0], peer[1]) if peer else None
        except (OSError, IndexError, TypeError):
            self.client = None
        config = server.config
        self.trust_forwarded = self.client is not None and trusted(
            self.client[0], tuple(config.forwarded_allow_ips)
        )

    # --- raw I/O -------------------------------------------------------------

    async def _recv(self) -> bytes:
        sock = self.sock
        while True:
            try:
                data = sock.recv(RECV_SIZE)
                break
            except BlockingIOError:
                await trio.lowlevel.wait_readable(sock)
            except OSError:  # reset by peer and friends: same as EOF for us
                data = b""
                break
        if self._on_first_read is not None:
            self._first_read_done()
        return data

    def _first_read_done(self) -> None:
        callback, self._on_first_read = self._on_first_read, None
        if callback is not None:
            callback()

    async def _sendall(self, data: bytes) -> None:
        sock = self.sock
        view: Any = data
        while view:
            try:
                sent = sock.send(view)
            except BlockingIOError:
                # A client that takes none of our bytes for --send-timeout is gone.
                with trio.move_on_after(self.server.config.send_timeout):
                    await trio.lowlevel.wait_writable(sock)
                    continue
                raise ClientDisconnected("client took no response bytes in time") from None
            if sent == len(view):
                return
            view = memoryview(view)[sent:]

    async def _receive_more(self) -> None:
        """More bytes for h11, through the framing checks. A framing error ahead of
        what h11 has already consumed is raised here, when h11 needs those bytes."""
        framing = self.framing
        if framing.error is not None:
            raise framing.error
        data = await self._recv()
        if not data:
            framing.feed(b"")
            self.conn.receive_data(b"")
            return
        validated = framing.feed(data)
        if validated:
            self.conn.receive_data(validated)
        elif framing.error is not None:
            raise framing.error

    # --- the connection loop ---------------------------------------------------

    async def run(self) -> None:
        server = self.server
        try:
            await self._serve()
        except (OSError, ClientDisconnected):
            pass  # the client went away; nothing to answer
        except Exception:
            # A bug of ours (or an h11 error we did not foresee): this connection
            # ends, the worker and its other connections go on.
            log.exception("internal error on a connection from %s; closing it", self.client)
        finally:
            server.connection_closed(self)
            # A connection given up before its first read still owes the front an
            # answer, or the front would hold its copy of the fd forever.
            self._first_read_done()
            try:
                self.sock.close()
            except OSError:
                pass

    async def _read_proxy_header(self, config: Any) -> bool:
        """--proxy-protocol: the real client's address comes first on the wire."""
        buffer = b""
        with trio.move_on_after(config.header_timeout):
            while True:
                data = await self._recv()
                if not data:
                    return False
                buffer += data
                try:
                    parsed = parse_proxy_header(buffer)
                except ProxyHeaderError as exc:
                    log.info("closing a connection from %s: %s", self.client, exc)
                    return False
                if parsed is None:
                    continue
                info, used = parsed
                if info.client is not None:
                    self.client = info.client
                if buffer[used:]:
                    self.conn.receive_data(self.framing.feed(buffer[used:]))
                return True
        return False

    def effective_client(self, event: h11.Request) -> tuple[str, int] | None:
        """The client, or the one X-Forwarded-For names when the peer is trusted."""
        if self.trust_forwarded:
            for name, value in event.headers:
                if name == b"x-forwarded-for":
                    host = forwarded_client(
                        value.decode("latin-1"), tuple(self.server.config.forwarded_allow_ips)
                    )
                    if host:
                        return (host, 0)
        return self.client

    async def _serve(self) -> None:
        config = self.server.config
        if config.proxy_protocol and not await self._read_proxy_header(config):
            return
        limit = config.limit_concurrency
        if limit is not None and len(self.server.connections) > limit:
            # Over --limit-concurrency: answer its first request at once with 503.
            if await self._next_request(config) is not None:
                await self._send_error(503)
            return
        burst = 0
        while True:
            event = await self._next_request(config)
            if event is None:
                return
            self.requests += 1
            if not await self._handle(event):
                return
            self.conn.start_next_cycle()
            if self.framing.holding:
                # An Upgrade request answered normally: the bytes after it are HTTP.
                resumed = self.framing.resume()
                if resumed:
                    self.conn.receive_data(resumed)
            burst += 1
            if burst >= _FAIRNESS_BURST:
                burst = 0
                await trio.lowlevel.checkpoint()

    async def _next_request(self, config: Any) -> h11.Request | None:
        """Wait for the next request's head, enforcing the keep-alive and header
        timeouts and answering protocol errors. None means: close quietly.

        The header timeout bounds the whole head, from its first byte (or from the
        connection's start, for its first request), not each read: a client that
        drips a byte a second still runs out of time (Node's headersTimeout)."""
        conn = self.conn
        deadline = trio.current_time() + config.header_timeout if not self.requests else None
        while True:
            try:
                event = conn.next_event()
            except h11.RemoteProtocolError as exc:
                await self._send_error(exc.error_status_hint)
                return None
            if event is _NEED_DATA:
                if self.framing.error is not None:
                    await self._send_error(self.framing.error.status)
                    return None
                started = bool(conn.trailing_data[0]) or self.framing.partial
                if deadline is None and started:
                    deadline = trio.current_time() + config.header_timeout
                idle = deadline is None
                if idle:
                    timeout = config.keep_alive
                    if self.server.draining:
                        timeout = min(timeout, DRAIN_IDLE_GRACE)
                    wait_until = trio.current_time() + timeout
                else:
                    wait_until = deadline
                with trio.move_on_at(wait_until) as scope:  # type: ignore[arg-type]
                    if idle:
                        self.idle_scope = scope
                    try:
                        await self._receive_more()
                    except FramingError as exc:
                        await self._send_error(exc.status)
                        return None
                    finally:
                        self.idle_scope = None
                if scope.cancelled_caught:
                    if idle or not (conn.trailing_data[0] or self.framing.partial):
                        return None  # idle keep-alive expired (or drained): just close
                    await self._send_error(408)
                    return None
                continue
            if type(event) is h11.Request:
                if event.http_version not in _VERSIONS:
                    await self._send_error(505)
                    return None
                return event
            # ConnectionClosed, or anything unexpected between requests.
            return None

    # --- one request -------------------------------------------------------------

    async def _handle(self, event: h11.Request) -> bool:
        """Serve one request; True if the connection may carry another."""
        server = self.server
        server.requests_total += 1
        if server.requests_total == server.retire_after:
            server.request_limit_reached()
        self.handler_started = trio.current_time()
        self.request_line = (event.method, event.target)
        length = declared_length(event.headers)
        if length is not None and length > self._body_limit:
            # Refused before reading a byte of it (and before the handler runs).
            await self._send_error(413)
            return False
        self._body_received = 0
        self._body_done = False
        if server.interface == "asgi":
            if is_websocket_upgrade(event):
                await WebSocketSession(self, event).run()
                return False
            return await run_http(self, event)
        request = Request(
            method=event.method.decode("ascii"),
            target=event.target,
            headers=Headers(event.headers),
            client=self.effective_client(event),
            http_version=event.http_version.decode("ascii"),
            worker_id=server.worker_id,
            read_chunk=self._read_body_chunk,
        )
        scope = trio.CancelScope()
        self.handler_scope = scope
        try:
            with scope:
                result = server.handler(request)
                if server.handler_is_async or hasattr(result, "__await__"):
                    result = await result
                response = coerce_response(result)
            if scope.cancelled_caught:
                # The disconnect sweep found the client gone while the handler ran.
                raise ClientDisconnected("client disconnected while the handler ran")
        except BodyTooLarge:
            await self._send_error(413)
            return False
        except MalformedBody:
            await self._send_error(400)
            return False
        except FramingError as exc:
            await self._send_error(exc.status)
            return False
        except (StateUnavailable, StateFull) as exc:
            log.error("%s %s: %s", request.method, request.path, exc)
            code = 507 if isinstance(exc, StateFull) else 503
            response = Response(code, error_body(code), [("content-type", "text/plain")])
        except ClientDisconnected:
            raise
        except InvalidResponse as exc:
            log.error("%s %s: %s", request.method, request.path, exc)
            response = self._internal_error(exc)
        except Exception as exc:
            log.exception("handler raised for %s %s", request.method, request.path)
            response = self._internal_error(exc)
        finally:
            self.handler_scope = None
        if self.conn.their_state is h11.ERROR or (
            self.framing.error is not None and self.conn.their_state is h11.SEND_BODY
        ):
            # The body was malformed and the handler swallowed the error.
            error = self.framing.error
            await self._send_error(error.status if error is not None else 400)
            return False
        return await self._send_response(response, event.method == b"HEAD")

    def server_address(self) -> tuple[str, int] | None:
        if self._server_address is None:
            try:
                name = self.sock.getsockname()
                self._server_address = (name[0], name[1])
            except (OSError, IndexError, TypeError):
                return None
        return self._server_address

    def client_gone(self) -> bool:
        """For the disconnect sweep: has the client closed or reset the connection?
        A peek that sees EOF counts as gone (as for uvicorn and Node's http server,
        a half-closed client is treated as disconnected while its handler runs)."""
        try:
            return self.sock.recv(1, socket.MSG_PEEK) == b""
        except BlockingIOError:
            return False
        except OSError:
            return True

    def _internal_error(self, exc: BaseException) -> Response:
        body = error_body(500)
        if self.server.config.debug:
            import traceback

            body += "".join(traceback.format_exception(exc)).encode("utf-8", "replace")
        return Response(500, body, [("content-type", "text/plain; charset=utf-8")])

    async def _read_body_chunk(self) -> bytes | None:
        """Next piece of the current request's body, None at its end."""
        if self._body_done:
            return None
        conn = self.conn
        while True:
            try:
                event = conn.next_event()
            except h11.RemoteProtocolError as exc:
                if conn.trailing_data[1]:  # the client closed mid-body
                    raise ClientDisconnected(str(exc)) from None
                raise MalformedBody(str(exc)) from None
            if event is _NEED_DATA:
                if conn.they_are_waiting_for_100_continue:
                    await self._sendall(
                        conn.send(h11.InformationalResponse(status_code=100, headers=[]))
                    )
                with trio.move_on_after(self.server.config.header_timeout) as scope:
                    await self._receive_more()  # FramingError: the body broke the rules
                if scope.cancelled_caught:
                    raise ClientDisconnected("timed out reading the request body")
                continue
            kind = type(event)
            if kind is h11.Data:
                self._body_received += len(event.data)
                if self._body_received > self._body_limit:
                    raise BodyTooLarge(self._body_limit)
                return bytes(event.data)
            if kind is h11.EndOfMessage:
                self._body_done = True
                return None
            raise ClientDisconnected("connection closed before the body ended")

    def _discard_buffered_body(self) -> None:
        """The handler answered without reading the whole body: consume what is
        already buffered (no I/O), so a small ignored body does not cost keep-alive."""
        conn = self.conn
        try:
            while conn.their_state is h11.SEND_BODY:
                event = conn.next_event()
                if event is _NEED_DATA:
                    return
        except h11.RemoteProtocolError:
            return

    # --- responses -----------------------------------------------------------------

    async def _send_response(self, response: Response, head: bool) -> bool:
        conn = self.conn
        server = self.server
        body = response.body
        status = response.status
        headers = encode_header_pairs(response.headers)
        streaming = not isinstance(body, bytes | str | bytearray)
        # 1xx, 204 and 304 have no body whatever the handler gave (RFC 9110 §6.4.1);
        # h11 would refuse the bytes after the head went out.
        bodiless = head or status in (204, 304) or 100 <= status < 200
        if not streaming:
            if isinstance(body, str):
                body = body.encode("utf-8")
            if conn.their_state is h11.SEND_BODY:
                self._discard_buffered_body()
            if not has_header(headers, b"content-length") and status not in (204, 304):
                headers.append((b"content-length", str(len(body)).encode("ascii")))
        if server.draining or (not streaming and conn.their_state not in _REQUEST_READ):
            headers.append((b"connection", b"close"))
        headers.append((b"date", http_date()))
        try:
            data = conn.send(
                h11.Response(status_code=status, headers=headers, reason=reason(status))
            )
            if not streaming:
                # Built whole before a byte is written: if the handler's headers and
                # body disagree (a wrong Content-Length), the client still gets a 500.
                if body and not bodiless:
                    data += conn.send(h11.Data(data=body))
                data += conn.send(h11.EndOfMessage())
        except h11.LocalProtocolError as exc:
            log.error("invalid response from the handler: %s", exc)
            return await self._send_error(500, written=False)
        if not streaming:
            await self._sendall(data)
            self._finished(status, 0 if bodiless else len(body))
        else:
            await self._sendall(data)
            sent = await self._stream_body(body, bodiless)
            self._finished(status, max(sent, 0))
            if sent < 0:
                return False
        if conn.their_state is h11.SEND_BODY:
            self._discard_buffered_body()
        return conn.our_state is _H11_DONE and conn.their_state is _H11_DONE

    async def _stream_body(self, body: Any, head: bool) -> int:
        """Body bytes sent, or -1 if the body raised (the connection must close)."""
        conn = self.conn
        sent = 0
        try:
            if not head:
                async for chunk in body:
                    if isinstance(chunk, str):
                        chunk = chunk.encode("utf-8")
                    if chunk:
                        sent += len(chunk)
                        await self._sendall(conn.send(h11.Data(data=chunk)))
            end = conn.send(h11.EndOfMessage())
        except (OSError, ClientDisconnected):
            raise
        except Exception:
            # The head is out: the response cannot be turned into a 500 any more.
            # Closing without the final chunk tells the client it is truncated (also
            # for h11's LocalProtocolError: a body longer or shorter than the
            # handler's Content-Length).
            log.exception("streaming response body failed; closing the connection")
            return -1
        finally:
            aclose = getattr(body, "aclose", None)
            if aclose is not None:
                await aclose()
        await self._sendall(end)
        return sent

    async def _send_error(self, status: int, written: bool | None = None) -> bool:
        """Answer an error the client caused (or we did) and close: False always.
        `written=False`: nothing of a response has gone out yet, whatever h11's
        state says (h11 refused the handler's response before a byte was sent)."""
        conn = self.conn
        body = error_body(status)
        headers = [
            (b"content-type", b"text/plain; charset=utf-8"),
            (b"content-length", str(len(body)).encode("ascii")),
            (b"connection", b"close"),
            (b"date", http_date()),
        ]
        if written is False or conn.our_state in (h11.IDLE, h11.SEND_RESPONSE):
            try:
                data = conn.send(
                    h11.Response(status_code=status, headers=headers, reason=reason(status))
                )
                data += conn.send(h11.Data(data=body)) + conn.send(h11.EndOfMessage())
            except h11.LocalProtocolError:
                # h11 is in ERROR (the request never parsed): write the bytes directly.
                data = (
                    b"HTTP/1.1 %d %s\r\n" % (status, reason(status))
                    + b"".join(k + b": " + v + b"\r\n" for k, v in headers)
                    + b"\r\n"
                    + body
                )
            await self._sendall(data)
            self._finished(status, len(body))
        await self._linger()
        return False

    def _finished(self, status: int, body_bytes: int) -> None:
        """A response went out: count it (and log it, with --access-log)."""
        started = self.handler_started
        duration = trio.current_time() - started if started else 0.0
        self.server.observe(status, duration)
        if self.server.config.access_log:
            method, target = self.request_line or (b"-", b"-")
            client = f"{self.client[0]}:{self.client[1]}" if self.client else "-"
            access_log.info(
                '%s "%s %s" %d %d %.1fms',
                client,
                method.decode("ascii", "replace"),
                target.decode("latin-1"),
                status,
                body_bytes,
                duration * 1000,
                extra={
                    "client": client,
                    "method": method.decode("ascii", "replace"),
                    "path": target.decode("latin-1"),
                    "status": status,
                    "bytes": body_bytes,
                    "duration_ms": round(duration * 1000, 3),
                },
            )
        self.handler_started = 0.0
        self.request_line = None

    async def _linger(self) -> None:
        """Half-close, then read and discard for a moment before the close, so the
        client reads our answer instead of a connection reset."""
        try:
            self.sock.shutdown(socket.SHUT_WR)
        except OSError:
            return
        received = 0
        with trio.move_on_after(_LINGER_SECONDS):
            while received < _LINGER_BYTES:
                data = await self._recv()
                if not data:
                    return
                received += len(data)
