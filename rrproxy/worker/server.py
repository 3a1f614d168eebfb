"""WorkerServer: the worker's connections, counters and drain, independent of where
connections come from (handed over by the front, or accepted from a shared socket)."""

from __future__ import annotations

import errno
import logging
import socket
from bisect import bisect_left
from collections.abc import Callable
from typing import Any

import trio

from ..config import WorkerConfig
from ..ipc.messages import LATENCY_BUCKETS
from .http import DRAIN_IDLE_GRACE, HTTPConnection

log = logging.getLogger("rrproxy.worker")

_ACCEPT_BATCH = 16
#: How often the worker looks for clients that left while their handler runs, and
#: how long a handler must have run before it is looked at (the hot path pays nothing).
DISCONNECT_SWEEP_INTERVAL = 0.5
_RESOURCE_ERRNOS = {errno.EMFILE, errno.ENFILE, errno.ENOMEM, errno.ENOBUFS}
_RESOURCES_OUT = -1


class WorkerServer:
    def __init__(
        self,
        config: WorkerConfig,
        worker_id: int,
        handler: Callable[..., Any],
        handler_is_async: bool,
        retire_after: int = 0,
        on_retire: Callable[[str], None] | None = None,
        interface: str = "native",
    ) -> None:
        self.config = config
        self.worker_id = worker_id
        self.handler = handler
        self.handler_is_async = handler_is_async
        #: "native" (Request -> Response) or "asgi" (ASGI 3 app).
        self.interface = interface
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
        self.on_retire = on_retire
        #: Called (synchronously) when the first connection arrives: under none and
        #: reuseport the front learns a client reached this worker only this way.
        self.on_first_connection: Callable[[], None] | None = None
        self._nursery: trio.Nursery | None = None
        self._all_closed = trio.Event()
        self._all_closed.set()
        #: Set when connections closed since the last load report.
        self.load_changed = trio.Event()
        self._below_cap = trio.Event()
        self._below_cap.set()

    def observe(self, status: int, seconds: float) -> None:
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
        return len(self.connections)

    # --- connection bookkeeping (called by HTTPConnection) ----------------------

    def connection_opened(self, connection: HTTPConnection) -> None:
        self.connections.add(connection)
        self.connections_total += 1
        if self._all_closed.is_set():
            self._all_closed = trio.Event()
        cap = self.config.max_connections
        if cap is not None and len(self.connections) >= cap and self._below_cap.is_set():
            self._below_cap = trio.Event()

    def connection_closed(self, connection: HTTPConnection) -> None:
        self.connections.discard(connection)
        self.load_changed.set()
        if not self.connections:
            self._all_closed.set()
        cap = self.config.max_connections
        if cap is None or len(self.connections) < cap:
            self._below_cap.set()

    # --- serving ----------------------------------------------------------------

    async def serve(self, task_status: Any = trio.TASK_STATUS_IGNORED) -> None:
        """Own the connection nursery until every connection has ended."""
        async with trio.open_nursery() as nursery:
            self._nursery = nursery
            task_status.started()
            await trio.sleep_forever()

    def start_connection(
        self, sock: socket.socket, on_first_read: Callable[[], None] | None = None
    ) -> None:
        assert self._nursery is not None
        connection = HTTPConnection(sock, self, on_first_read)
        # Counted now, not when its task first runs: the accept loop's cap and the
        # counts reported to the front must include connections not yet started.
        self.connection_opened(connection)
        if self.connections_total == 1 and self.on_first_connection is not None:
            self.on_first_connection()
        self._nursery.start_soon(connection.run)

    async def accept_loop(self, listener: socket.socket) -> None:
        """SCHED_NONE: accept from the shared listening socket. Every worker waits on
        it, and trio's epoll wakes them all (EPOLLONESHOT, not EPOLLEXCLUSIVE); the
        losers see EAGAIN and go back to waiting."""
        listener.setblocking(False)
        while True:
            # At our share of --max-connections, leave new ones in the kernel backlog.
            await self._below_cap.wait()
            try:
                await trio.lowlevel.wait_readable(listener)
            except trio.ClosedResourceError:
                return
            if self._accept_batch(listener, _ACCEPT_BATCH) == _RESOURCES_OUT:
                log.warning("accept failed: out of file descriptors or memory; pausing 100 ms")
                await trio.sleep(0.1)
            await trio.lowlevel.checkpoint()

    def accept_pending(self, listener: socket.socket) -> None:
        """Accept whatever is already queued on the listener, without waiting."""
        while self._accept_batch(listener, _ACCEPT_BATCH) == _ACCEPT_BATCH:
            pass

    def _accept_batch(self, listener: socket.socket, limit: int) -> int:
        """Up to `limit` accepts without waiting; how many were accepted, or
        _RESOURCES_OUT (-1) if the process is out of fds or memory."""
        accepted = 0
        while accepted < limit:
            try:
                sock, _addr = listener.accept()
            except BlockingIOError:
                break
            except OSError as exc:
                if exc.errno in _RESOURCE_ERRNOS:
                    return _RESOURCES_OUT
                if exc.errno in (errno.ECONNABORTED, errno.EPROTO):
                    continue
                # EBADF/EINVAL: the listener was closed under us (draining). Any
                # other errno is just as final for this socket.
                log.info("accept stopped: %s", exc)
                return accepted
            accepted += 1
            self.start_connection(sock)
            if not self._below_cap.is_set():
                break
        return accepted

    async def sweep_disconnects(self) -> None:
        """Cancel handlers whose client has gone away (they see trio.Cancelled)."""
        while True:
            await trio.sleep(DISCONNECT_SWEEP_INTERVAL)
            started_before = trio.current_time() - DISCONNECT_SWEEP_INTERVAL / 2
            for connection in list(self.connections):
                started = connection.handler_started
                if (
                    started
                    and started < started_before
                    and connection.websocket is None
                    and connection.client_gone()
                ):
                    scope = connection.handler_scope
                    if scope is not None:
                        log.info("client %s went away; cancelling its handler", connection.client)
                        scope.cancel()
                    elif connection.asgi_cycle is not None:
                        log.info(
                            "client %s went away; telling the app (http.disconnect)",
                            connection.client,
                        )
                        connection.asgi_cycle.client_gone()

    async def drain(self, timeout: float) -> None:
        """Finish in-flight requests (their responses say Connection: close), close
        idle keep-alive connections, and return when none is left or at `timeout`."""
        self.draining = True
        deadline = trio.current_time() + DRAIN_IDLE_GRACE
        for connection in list(self.connections):
            scope = connection.idle_scope
            if scope is not None and scope.deadline > deadline:
                scope.deadline = deadline
        with trio.move_on_after(timeout):
            await self._all_closed.wait()
        sockets = [c.websocket for c in self.connections if c.websocket is not None]
        if sockets:
            # WebSockets outlive any drain: tell their clients to come back (1012).
            for session in sockets:
                session.close_for_restart()
            with trio.move_on_after(1.0):
                await self._all_closed.wait()
        if self.connections:
            log.warning(
                "graceful timeout: closing %d connection(s) still open",
                len(self.connections),
            )
