"""WorkerServer: the worker's connections, counters and drain, independent of where
connections come from (handed over by the front, or accepted from a shared socket)
and of the event loop (the backend's primitives only)."""

from __future__ import annotations

import logging
import socket
from bisect import bisect_left
from collections.abc import Callable
from typing import Any, Protocol

import h11

from ..config import WorkerConfig
from ..ipc.messages import LATENCY_BUCKETS
from ..listeners import AcceptEnd, accept_batch
from ..protocol.http11 import Limits
from .backend import Backend, ResourceClosed, TaskGroup
from .connection import DRAIN_IDLE_GRACE, HTTPConnection
from .native_response import NativeAdapter
from .timeouts import Timeouts

log = logging.getLogger("rrproxy.worker")

_ACCEPT_BATCH = 16
#: How often the worker looks for clients that left while their handler runs, and
#: how long a handler must have run before it is looked at (the hot path pays nothing).
DISCONNECT_SWEEP_INTERVAL = 0.5


class Adapter(Protocol):
    """How a request reaches the app: native handler, ASGI app (or WSGI)."""

    async def serve(self, connection: HTTPConnection, request: h11.Request) -> bool:
        """Answer `request` on `connection`; True if the connection may carry
        another request."""
        ...


class WorkerServer:
    """The worker's connections, counters and drain, whatever loop it runs on and wherever
    connections come from (handed by the front, or accepted from a shared socket)."""

    def __init__(
        self,
        config: WorkerConfig,
        worker_id: int,
        handler: Callable[..., Any],
        handler_is_async: bool,
        backend: Backend,
        adapter: Adapter | None = None,
        retire_after: int = 0,
    ) -> None:
        self.config = config
        self.worker_id = worker_id
        self.handler = handler
        self.handler_is_async = handler_is_async
        self.backend = backend
        self.adapter: Adapter = adapter or NativeAdapter()
        self.limits = Limits(config.max_header_size, config.max_headers, config.max_body_size)
        #: The ASGI lifespan state, copied into every request's scope.
        self.asgi_state: dict[str, Any] = {}
        self.draining = False
        self.connections: set[HTTPConnection] = set()
        self.connections_total = 0
        self.requests_total = 0
        #: Responses by status, and the latency histogram (see messages.LATENCY_BUCKETS).
        self.statuses: dict[int, int] = {}
        self.latency_counts = [0] * (len(LATENCY_BUCKETS) + 1)
        self.latency_sum = 0.0
        #: requests_total at which the worker asks to be replaced (0: never).
        self.retire_after = retire_after
        self.on_retire: Callable[[str], None] | None = None
        #: Called (synchronously) when the first connection arrives: under none and
        #: reuseport the front learns a client reached this worker only this way.
        self.on_first_connection: Callable[[], None] | None = None
        self._tasks: TaskGroup | None = None
        #: --ssl-*: connections are TLS (the files are read now: a reload re-reads them).
        self.tls_context = None
        if config.ssl_certfile:
            from ..tls import server_context

            self.tls_context = server_context(config)
        #: Every connection's wait deadlines, on one heap (run by the worker).
        self.timeouts = Timeouts(backend)
        self._all_closed = backend.event()
        self._all_closed.set()
        #: Set when connections closed since the last load report.
        self.load_changed = backend.event()
        self._below_cap = backend.event()
        self._below_cap.set()

    def observe(self, status: int, seconds: float) -> None:
        """Count one response: its status class and its latency in the histogram the front
        aggregates."""
        statuses = self.statuses
        statuses[status] = statuses.get(status, 0) + 1
        self.latency_counts[bisect_left(LATENCY_BUCKETS, seconds)] += 1
        self.latency_sum += seconds

    def request_limit_reached(self) -> None:
        """Called by a connection when requests_total hits retire_after."""
        if self.on_retire is not None:
            self.on_retire(f"served {self.requests_total} requests (--max-requests)")

    @property
    def connections_active(self) -> int:
        """Connections open now (started ones included, even before their task runs)."""
        return len(self.connections)

    # --- connection bookkeeping ---------------------------------------------------

    def connection_opened(self, connection: HTTPConnection) -> None:
        """Count a new connection; at our share of --max-connections the accept
        loop pauses."""
        self.connections.add(connection)
        self.connections_total += 1
        if self._all_closed.is_set():
            self._all_closed = self.backend.event()
        cap = self.config.worker_connections
        if cap is not None and len(self.connections) >= cap and self._below_cap.is_set():
            self._below_cap = self.backend.event()

    def connection_closed(self, connection: HTTPConnection) -> None:
        """Forget a connection that ended: wakes the drain and the accept loop."""
        self.connections.discard(connection)
        self.load_changed.set()
        if not self.connections:
            self._all_closed.set()
        cap = self.config.worker_connections
        if cap is None or len(self.connections) < cap:
            self._below_cap.set()

    # --- serving ----------------------------------------------------------------

    def serve_in(self, tasks: TaskGroup) -> None:
        """Connections run as tasks of `tasks` (the worker's connection group)."""
        self._tasks = tasks

    def start_connection(
        self, sock: socket.socket, on_first_read: Callable[[], None] | None = None
    ) -> None:
        """Serve `sock` as a new connection task; `on_first_read` tells the front it may close its
        copy once the first bytes are read."""
        assert self._tasks is not None
        connection = HTTPConnection(self)
        # Counted now, not when its task first runs: the accept loop's cap and the
        # counts reported to the front must include connections not yet started.
        self.connection_opened(connection)
        if self.connections_total == 1 and self.on_first_connection is not None:
            self.on_first_connection()
        self._tasks.start_soon(self._run_connection, connection, sock, on_first_read)

    async def _run_connection(
        self,
        connection: HTTPConnection,
        sock: socket.socket,
        on_first_read: Callable[[], None] | None,
    ) -> None:
        try:
            transport = await self.backend.open_transport(
                sock, self.config.send_timeout, on_first_read
            )
            if self.tls_context is not None:
                from ..tls import TLSTransport

                transport = TLSTransport(
                    transport,
                    self.tls_context,
                    self.backend,
                    self.config.ssl_handshake_timeout,
                )
        except OSError as exc:
            log.warning("cannot serve a connection: %s", exc)
            sock.close()
            if on_first_read is not None:
                on_first_read()  # the front must not hold its copy forever
            self.connection_closed(connection)
            return
        await connection.run(transport)

    async def accept_loop(self, listener: socket.socket) -> None:
        """SCHED_NONE: accept from the shared listening socket. Every worker waits on
        it, and trio's epoll wakes them all (EPOLLONESHOT, not EPOLLEXCLUSIVE); the
        losers see EAGAIN and go back to waiting."""
        listener.setblocking(False)
        backend = self.backend
        while True:
            # At our share of --max-connections, leave new ones in the kernel backlog.
            await self._below_cap.wait()
            try:
                await backend.wait_readable(listener)
            except ResourceClosed:
                return
            end = self._accept_batch(listener)
            if end is AcceptEnd.OUT_OF_RESOURCES:
                log.warning("accept failed: out of file descriptors or memory; pausing 100 ms")
                await backend.sleep(0.1)
            await backend.checkpoint()

    def accept_pending(self, listener: socket.socket) -> None:
        """Accept whatever is already queued on the listener, without waiting."""
        while self._accept_batch(listener) is AcceptEnd.LIMIT:
            pass

    def _accept_batch(self, listener: socket.socket) -> AcceptEnd:
        """Accept what is queued, up to a batch and to our connection cap, and start
        serving each connection."""
        cap = self.config.worker_connections
        limit = _ACCEPT_BATCH if cap is None else min(_ACCEPT_BATCH, cap - len(self.connections))
        if limit <= 0:
            return AcceptEnd.DRAINED
        accepted: list[tuple[socket.socket, object]] = []
        end, error = accept_batch(listener.accept, limit, accepted)
        for sock, _address in accepted:
            self.start_connection(sock)
        if end is AcceptEnd.CLOSED:
            # The listener was closed under us (draining), or is unusable.
            log.info("accept stopped: %s", error)
        return end

    async def sweep_disconnects(self) -> None:
        """Tell handlers whose client has gone away: a native handler is cancelled (it
        sees the loop's cancellation at its next await), an ASGI app gets
        http.disconnect from receive(), or websocket.disconnect before it accepted (once
        it has, handler_started is 0 and the session's reader sees the client go)."""
        backend = self.backend
        while True:
            await backend.sleep(DISCONNECT_SWEEP_INTERVAL)
            started_before = backend.current_time() - DISCONNECT_SWEEP_INTERVAL / 2
            for connection in list(self.connections):
                started = connection.handler_started
                if started and started < started_before and connection.client_gone():
                    if connection.websocket is not None:
                        log.info(
                            "client %s left before its WebSocket was accepted", connection.client
                        )
                        connection.websocket.client_left()
                    elif connection.asgi_cycle is not None:
                        log.info(
                            "client %s went away; telling the app (http.disconnect)",
                            connection.client,
                        )
                        connection.asgi_cycle.client_gone()
                    else:
                        log.info("client %s went away; cancelling its handler", connection.client)
                        connection.client_left()

    async def drain(self, timeout: float) -> None:
        """Finish in-flight requests (their responses say Connection: close), close
        idle keep-alive connections, and return when none is left or at `timeout`."""
        backend = self.backend
        self.draining = True
        deadline = backend.current_time() + DRAIN_IDLE_GRACE
        for connection in list(self.connections):
            connection.drain(deadline)
        with backend.move_on_after(timeout):
            await self._all_closed.wait()
        sockets = [c.websocket for c in self.connections if c.websocket is not None]
        if sockets:
            # WebSockets outlive any drain: tell their clients to come back (1012).
            for session in sockets:
                session.close_for_restart()
            with backend.move_on_after(1.0):
                await self._all_closed.wait()
        if self.connections:
            log.warning(
                "graceful timeout: closing %d connection(s) still open",
                len(self.connections),
            )
