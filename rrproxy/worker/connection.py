"""One client connection, written once for every event loop: the keep-alive loop,
the timeouts, the handler call and the response, over the I/O-free protocol core
(protocol/http11.py) and a driver's Transport (worker/trio/, worker/asyncio/).

Timeouts cost one attribute write per wait: `wait_deadline` says when whatever the
connection waits for (an idle keep-alive, the rest of a head, the next piece of a
body) must have arrived, and the worker's Timeouts task (timeouts.py) cancels the
connection's one cancel scope when it passes. The connection then ends; if a head
was half received, the client gets 408. The worker's disconnect sweep cancels the
same scope when a client leaves while its native handler runs.
"""

from __future__ import annotations

import logging
import math
from typing import TYPE_CHECKING

import h11

from ..errors import ClientDisconnected
from ..protocol.http import error_body
from ..protocol.http11 import NEED_DATA, BodyCut, Reject, ServerConnection
from ..protocol.proxy import ProxyHeaderError, forwarded_client, trusted
from ..protocol.proxy import parse as parse_proxy_header

if TYPE_CHECKING:
    from .asgi import HTTPCycle
    from .backend import Backend, CancelScope, Transport
    from .server import WorkerServer
    from .websocket import WebSocketSession

log = logging.getLogger("rrproxy.worker")
access_log = logging.getLogger("rrproxy.access")

#: When draining, an idle keep-alive connection gets this long to send one more
#: request (answered with Connection: close) before it is closed: a busy client then
#: never sees its connection vanish under a request it is just sending.
DRAIN_IDLE_GRACE = 1.0
#: After this many requests served back to back without waiting, yield to the other
#: tasks once: a pipelining client must not monopolise the worker's loop.
_FAIRNESS_BURST = 16
#: Bounds of the "lingering close" after an error response: read and discard what the
#: client still sends, so closing does not turn into a RST that destroys our answer.
_LINGER_SECONDS = 1.0
_LINGER_BYTES = 1024 * 1024

# What the connection is waiting for (for the deadline, the drain and the sweep).
BUSY, IDLE, HEAD, BODY = range(4)


class HTTPConnection:
    """One client connection in a worker: reads requests through the I/O-free core, calls the
    adapter (native, ASGI, WSGI) for each, and writes the answers. Adapters use its public part:
    core, read_body_chunk, send, send_error, finished, effective_client."""

    __slots__ = (
        "_gone",
        "asgi_cycle",
        "client",
        "core",
        "handler_started",
        "io",
        "phase",
        "request_line",
        "requests",
        "scope",
        "server",
        "trust_forwarded",
        "wait_deadline",
        "watched_until",
        "websocket",
    )

    def __init__(self, server: WorkerServer) -> None:
        self.server = server
        self.io: Transport | None = None
        self.core = ServerConnection(server.limits)
        self.scope: CancelScope | None = None
        self.phase = BUSY
        self._gone = False
        #: When the current wait must end (inf while the app works); see timeouts.py.
        self.wait_deadline = math.inf
        self.watched_until = math.inf
        #: When the current request's handling began (0: none), for the sweep.
        self.handler_started = 0.0
        #: (method, target) of the request being answered, for the access log.
        self.request_line: tuple[bytes, bytes] | None = None
        self.requests = 0
        self.asgi_cycle: HTTPCycle | None = None
        self.websocket: WebSocketSession | None = None
        self.client: tuple[str, int] | None = None
        self.trust_forwarded = False

    # --- lifetime -------------------------------------------------------------------

    async def run(self, transport: Transport) -> None:
        """Serve requests on `transport` until the client leaves, a timeout passes, an error closes
        the connection, or the worker drains. Never raises for anything a client does."""
        self.io = transport
        self.client = transport.client
        self.trust_forwarded = self.client is not None and trusted(
            self.client[0], tuple(self.server.config.forwarded_allow_ips)
        )
        try:
            with self.server.backend.cancel_scope() as scope:
                self.scope = scope
                await self._serve()
            timed_out = scope.cancelled_caught and not self._gone
            if timed_out and self.phase == HEAD and self.core.head_started:
                await self.send_error(408)  # the head did not arrive in time
        except ClientDisconnected:
            pass  # the client went away; nothing to answer
        except Exception:
            # A bug of ours (or an h11 error we did not foresee): this connection
            # ends, the worker and its other connections go on.
            log.exception("internal error on a connection from %s; closing it", self.client)
        finally:
            self.server.connection_closed(self)
            try:
                if not self._gone:
                    await _close_notify(transport, self.server.backend)
            finally:
                transport.close()

    def client_left(self) -> None:
        """The sweep saw the client go while its handler ran: end the connection."""
        self._gone = True
        if self.scope is not None:
            self.scope.cancel()

    def drain(self, deadline: float) -> None:
        """The worker is draining: an idle connection closes by `deadline`."""
        if self.phase == IDLE and self.wait_deadline > deadline:
            self.wait_deadline = deadline
            self.server.timeouts.watch(self, deadline)

    def wait_expired(self) -> None:
        """The Timeouts task: what we waited for did not come in time."""
        if self.scope is not None:
            self.scope.cancel()

    def client_gone(self) -> bool:
        """Whether the client has closed its side (checked without reading)."""
        return self.io is not None and self.io.client_gone()

    def server_address(self) -> tuple[str, int] | None:
        """The local address the client connected to, or None when the socket cannot say."""
        return self.io.server_address() if self.io is not None else None

    # --- reading ---------------------------------------------------------------------

    async def _wait_for_data(self, phase: int, deadline: float) -> None:
        """Read more from the client into the core, by `deadline` (or the scope ends)."""
        assert self.io is not None
        self.phase = phase
        self.wait_deadline = deadline
        self.server.timeouts.watch(self, deadline)
        data = await self.io.receive()
        self.wait_deadline = math.inf
        self.phase = BUSY
        self.core.receive_data(data)

    async def _read_proxy_header(self) -> bool:
        """--proxy-protocol: the real client's address comes first on the wire."""
        assert self.io is not None
        # Under TLS the header comes in clear before the handshake (HAProxy's
        # send-proxy on a TLS passthrough): read it below the TLS layer.
        push_ciphertext = getattr(self.io, "push_ciphertext", None)
        # A transport with push_ciphertext is the TLS one, which has `inner`.
        source = self.io.inner if push_ciphertext is not None else self.io  # type: ignore[attr-defined]
        buffer = b""
        self.phase = BODY  # a timeout here closes silently
        deadline = self.server.backend.current_time() + self.server.config.header_timeout
        self.wait_deadline = deadline
        self.server.timeouts.watch(self, deadline)
        while True:
            data = await source.receive()
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
            self.wait_deadline = math.inf
            self.phase = BUSY
            if buffer[used:]:
                if push_ciphertext is not None:
                    push_ciphertext(buffer[used:])
                else:
                    self.core.receive_data(buffer[used:])
            return True

    def effective_client(self, request: h11.Request) -> tuple[str, int] | None:
        """The client, or the one X-Forwarded-For names when the peer is trusted."""
        if self.trust_forwarded:
            for name, value in self.core.headers:
                if name == b"x-forwarded-for":
                    host = forwarded_client(
                        value.decode("latin-1"), tuple(self.server.config.forwarded_allow_ips)
                    )
                    if host:
                        return (host, 0)
        return self.client

    async def _next_request(self) -> h11.Request | None:
        """Wait for the next request's head; None means: close (quietly, or after the
        error answer this sends). The header timeout bounds the whole head, from its
        first byte (or from the connection's start, for its first request), not each
        read: a client that drips a byte a second still runs out of time (Node's
        headersTimeout)."""
        core = self.core
        server = self.server
        config = server.config
        now = server.backend.current_time
        head_deadline = now() + config.header_timeout if not self.requests else None
        while True:
            event = core.next_request()
            if event is NEED_DATA:
                if head_deadline is None and core.head_started:
                    head_deadline = now() + config.header_timeout
                if head_deadline is not None:
                    await self._wait_for_data(HEAD, head_deadline)
                    continue
                timeout = config.keep_alive
                if server.draining:
                    timeout = min(timeout, DRAIN_IDLE_GRACE)
                await self._wait_for_data(IDLE, now() + timeout)
                continue
            if type(event) is Reject:
                await self.send_error(event.status)
                return None
            # Neither NEED_DATA nor a Reject (checks mypy does not narrow on): a Request.
            return event  # type: ignore[return-value]

    async def read_body_chunk(self) -> bytes | None:
        """Next piece of the current request's body, None at its end. Raises
        BodyTooLarge, MalformedBody, or ClientDisconnected."""
        core = self.core
        while True:
            try:
                chunk = core.next_body_chunk()
            except BodyCut as exc:
                raise ClientDisconnected(str(exc)) from None
            if chunk is not NEED_DATA:
                return chunk  # type: ignore[return-value]  # bytes or None, not NEED_DATA
            assert self.io is not None
            interim = core.continue_100()
            if interim:
                await self.io.send(interim)
            deadline = self.server.backend.current_time() + self.server.config.header_timeout
            await self._wait_for_data(BODY, deadline)

    # --- the connection loop ------------------------------------------------------------

    async def _serve(self) -> None:
        server = self.server
        config = server.config
        if config.proxy_protocol and not await self._read_proxy_header():
            return
        limit = config.limit_concurrency
        if limit is not None and len(server.connections) > limit:
            # Over --limit-concurrency: answer its first request at once with 503.
            if await self._next_request() is not None:
                await self.send_error(503)
            return
        burst = 0
        checkpoint = server.backend.checkpoint
        while True:
            request = await self._next_request()
            if request is None:
                return
            self.requests += 1
            if not await self._handle(request):
                return
            if not self.core.start_next_request():
                return
            burst += 1
            if burst >= _FAIRNESS_BURST:
                burst = 0
                await checkpoint()

    async def _handle(self, request: h11.Request) -> bool:
        """Serve one request; True if the connection may carry another."""
        server = self.server
        server.requests_total += 1
        if server.requests_total == server.retire_after:
            server.request_limit_reached()
        self.handler_started = server.backend.current_time()
        self.request_line = (request.method, request.target)
        length = self.core.declared_length()
        if length is not None and length > server.limits.max_body:
            # Refused before reading a byte of it (and before the handler runs).
            return await self.send_error(413)
        return await server.adapter.serve(self, request)

    # --- writing --------------------------------------------------------------------

    async def send(self, data: bytes) -> None:
        """Write `data` to the client (raises ClientDisconnected if it has gone)."""
        assert self.io is not None
        await self.io.send(data)

    async def send_error(self, status: int, written: bool | None = None) -> bool:
        """Answer an error the client caused (or we did), then close: False always.
        `written=False`: nothing of a response has gone out yet."""
        data = self.core.error(status, written=written)
        if data:
            await self.send(data)
            self.finished(status, len(error_body(status)))
        await self._linger()
        return False

    async def _linger(self) -> None:
        """Half-close, then read and discard for a moment before the close, so the
        client reads our answer instead of a connection reset."""
        io = self.io
        assert io is not None
        await _close_notify(io, self.server.backend)
        io.shutdown_write()
        received = 0
        with self.server.backend.move_on_after(_LINGER_SECONDS):
            while received < _LINGER_BYTES:
                data = await io.receive()
                if not data:
                    return
                received += len(data)

    def finished(self, status: int, body_bytes: int) -> None:
        """A response went out: count it (and log it, with --access-log)."""
        server = self.server
        started = self.handler_started
        duration = server.backend.current_time() - started if started else 0.0
        server.observe(status, duration)
        if server.config.access_log:
            method, target = self.request_line or (b"-", b"-")
            client = f"{self.client[0]}:{self.client[1]}" if self.client else "-"
            fields = {
                "client": client,
                "method": method.decode("ascii", "replace"),
                "path": target.decode("latin-1"),
                "status": status,
                "bytes": body_bytes,
                "duration_ms": round(duration * 1000, 1),
                "worker": server.worker_id,
            }
            try:
                line = server.config.access_log_format.format(**fields)
            except (KeyError, IndexError, ValueError) as exc:
                line = f"{fields} (bad --access-log-format: {exc!r})"
            access_log.info("%s", line, extra=fields)
        self.handler_started = 0.0
        self.request_line = None


async def _close_notify(transport: Transport, backend: Backend) -> None:
    """TLS: say goodbye with close_notify before the TCP close (OpenSSL 3 clients
    report a close without it as an error: "unexpected eof while reading")."""
    notify = getattr(transport, "close_notify", None)
    if notify is not None:
        with backend.move_on_after(1.0):
            await notify()
