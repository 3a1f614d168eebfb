"""The Worker: owns the worker's channel to the front, its server, its reports and
the order of shutdown. Written once for every event loop (the Backend's primitives)."""

from __future__ import annotations

import logging
import os
import signal
import socket
from collections.abc import Callable

from .. import cluster, state
from ..config import KERNEL_POLICIES
from ..fds import close_fds
from ..ipc.channel import ChannelClosed, FdLost, WorkerChannel
from ..ipc.messages import (
    ClusterInfo,
    Failed,
    Load,
    Message,
    NewConn,
    NewConns,
    Poll,
    ProtocolError,
    Ready,
    Rejected,
    ReopenLogs,
    Reply,
    Retire,
    Stats,
    Stop,
    Taken,
    UserMessage,
)
from ..logs import reopen_log_file
from .backend import CancelScope, Event
from .calls import CallFailed, CallUnanswered, FrontCalls
from .lifespan import Lifespan, LifespanFailed
from .server import WorkerServer

log = logging.getLogger("rrproxy.worker")

#: Exit status for "cannot boot" (same convention as gunicorn's WORKER_BOOT_ERROR).
EXIT_BOOT_ERROR = 3
#: Minimum time between two Load reports (closes are coalesced in between).
LOAD_REPORT_INTERVAL = 0.01
#: How long a cluster message waits for the front to confirm delivery.
CLUSTER_TIMEOUT = 5.0


class Worker:
    """One worker process's life on its loop: Ready to the front, then serving its
    messages and connections, then the ordered drain when told to stop."""

    def __init__(
        self,
        channel: WorkerChannel,
        server: WorkerServer,
        listeners: list[socket.socket],
        lifespan: Lifespan | None = None,
    ) -> None:
        self.lifespan = lifespan
        self.backend = backend = server.backend
        config = server.config
        #: The family of handed-over connections when it is known (one TCP family:
        #: no probing syscalls per connection); None: ask each fd.
        self._family: int | None = None
        if not config.mixed_families:
            self._family = socket.AF_INET6 if ":" in config.bind_host else socket.AF_INET
        self.channel = channel
        self.server = server
        self.listeners = listeners
        self._stop = backend.event()
        self._stop_timeout = server.config.graceful_timeout
        self.calls = FrontCalls(channel.send, backend)
        server.on_retire = self.ask_to_retire

    def ask_to_retire(self, reason: str) -> None:
        """Ask the front for a replacement; keep serving until it says Stop."""
        log.info("asking to be replaced: %s", reason)
        self._answer(Retire(reason))

    def request_stop(self, timeout: float | None = None) -> None:
        """Begin the graceful stop (from the front's Stop, SIGTERM, or a lost front):
        stop accepting, then drain for `timeout` seconds (default --graceful-timeout)."""
        if timeout is not None:
            self._stop_timeout = timeout
        self._stop.set()

    async def run(self) -> int:
        """Serve until stopped; the process exit status."""
        backend = self.backend
        server = self.server
        async with backend.task_group() as tasks:
            cluster.install(self._send_user_message, tasks.start_soon)
            if server.config.state == "memory":
                state.install(state.FrontBackend(self.calls))
            else:
                from ..state.redis import RedisBackend

                state.install(RedisBackend(server.config.state, backend))
            tasks.start_soon(self.channel.run_flusher)
            serving = backend.event()
            tasks.start_soon(self._serve_connections, serving)
            await serving.wait()
            tasks.start_soon(self._read_channel)
            tasks.start_soon(self._report_stats)
            if server.config.policy not in KERNEL_POLICIES:
                # Only the front's own policies use live counts (least-conn,
                # --limit-concurrency, --max-connections); under none/reuseport the
                # periodic Stats are enough, but for one Load when the first client
                # arrives: a worker that served someone never counts toward a
                # restart storm, even if it dies before its first Stats.
                tasks.start_soon(self._report_load)
            else:
                server.on_first_connection = lambda: self._answer(Load(1))
            tasks.start_soon(server.sweep_disconnects)
            tasks.start_soon(server.timeouts.run)
            tasks.start_soon(self._watch_signals)
            if self.lifespan is not None:
                # Before Ready: under rr no connection arrives before startup is done.
                try:
                    await self.lifespan.startup(tasks, server.config.graceful_timeout)
                except LifespanFailed as exc:
                    await self.channel.send(
                        Failed("lifespan", f"ASGI lifespan startup failed: {exc}")
                    )
                    tasks.cancel()
                    return EXIT_BOOT_ERROR
            accept_scope = backend.cancel_scope()
            accept_done = backend.event()
            if self.listeners:
                tasks.start_soon(self._accept, accept_scope, accept_done)
            else:
                accept_done.set()
            await self.channel.send(Ready())
            await self._stop.wait()
            # Stop taking new connections first (under `none` the shared socket's
            # queue then belongs to the other workers), then drain what we have. The
            # accept task owns the listener and closes it itself, once it has
            # stopped using it: closing it under a woken accept() gave EBADF.
            accept_scope.cancel()
            await accept_done.wait()
            await server.drain(self._stop_timeout)
            if self.lifespan is not None:
                await self.lifespan.shutdown(min(self._stop_timeout, 30.0) or 1.0)
            log.info(
                "stopped after %d connections, %d requests",
                server.connections_total,
                server.requests_total,
            )
            self._answer(self._stats())
            with backend.move_on_after(1.0):
                try:
                    # drain(), not flush(): flush() returns at once while the
                    # flusher task is mid-flush, and cancelling that task below
                    # would drop what it had not sent (the last Stats, a Taken).
                    await self.channel.drain()
                except ChannelClosed:
                    pass
            tasks.cancel()
        return 0

    async def _serve_connections(self, serving: Event) -> None:
        """Connections run in their own task group, so the worker's other tasks and
        each connection have one owner."""
        async with self.backend.task_group() as connections:
            self.server.serve_in(connections)
            serving.set()
            await self.backend.event().wait()  # until the worker's group is cancelled

    async def _accept(self, scope: CancelScope, done: Event) -> None:
        """Accept from every listener until stopped; the task owns the listeners and
        closes them itself, once it has stopped using them."""
        server = self.server
        try:
            with scope:
                async with self.backend.task_group() as loops:
                    for listener in self.listeners:
                        loops.start_soon(server.accept_loop, listener)
            for listener in self.listeners:
                if _reuseport_own(listener, server.config.reuseport_binds):
                    # Our own queue: what the kernel already put in it is served here
                    # (with Connection: close) rather than reset when the socket closes.
                    server.accept_pending(listener)
        finally:
            for listener in self.listeners:
                self.backend.notify_closing(listener)
                listener.close()
            done.set()

    def _stats(self) -> Stats:
        server = self.server
        return Stats(
            server.connections_total,
            server.connections_active,
            server.requests_total,
            {str(code): count for code, count in server.statuses.items()},
            list(server.latency_counts),
            server.latency_sum,
        )

    def _answer(self, message: Taken | Rejected | Stats | Load | Retire) -> None:
        """Send from synchronous code; if the front's queue is full, the flusher
        task sends it when there is room (order kept)."""
        try:
            self.channel.send_nowait(message)
        except ChannelClosed:
            pass

    async def _report_stats(self) -> None:
        # Sent from the event loop on purpose: it is also the heartbeat, so a loop
        # blocked by a handler falls silent and the front can tell.
        config = self.server.config
        interval = config.stats_interval
        stuck = getattr(self.server.adapter, "stuck", None)
        while not self.channel.closed:
            await self.backend.sleep(interval)
            if (
                stuck is not None
                and config.heartbeat_timeout
                and stuck(config.heartbeat_timeout / 2)
            ):
                # Every WSGI thread is stuck in one request: fall silent, so the front
                # replaces this worker after --timeout, as for a blocked event loop.
                continue
            self._answer(self._stats())

    async def _report_load(self) -> None:
        """Tell the front when connections close, one message per burst of closes:
        it needs current counts for --max-connections and --limit-concurrency."""
        server = self.server
        while not self.channel.closed:
            await server.load_changed.wait()
            server.load_changed = self.backend.event()
            self._answer(Load(server.connections_active))
            # Closes in the next moment go into the next report: at most one Load
            # per LOAD_REPORT_INTERVAL, well inside the front's HOLD_FOR_ROOM.
            await self.backend.sleep(LOAD_REPORT_INTERVAL)

    async def _watch_signals(self) -> None:
        with self.backend.signal_receiver(signal.SIGTERM) as signals:
            async for _ in signals:
                log.info("SIGTERM: draining")
                self.request_stop()

    async def _read_channel(self) -> None:
        channel = self.channel
        while True:
            try:
                message, fds = await channel.receive()
            except ChannelClosed:
                self.calls.fail_all("the front process went away")
                # The front is gone: no orphans. Finish what we have and exit.
                if not self._stop.is_set():
                    log.warning("front process went away; draining and exiting")
                self.request_stop()
                return
            except FdLost as exc:
                # Out of fds: give the connection back; the front still holds it.
                log.warning("out of file descriptors: returning connections to the front")
                lost = exc.message
                if isinstance(lost, NewConn):
                    self._answer(Rejected(lost.conn_id))
                elif isinstance(lost, NewConns):
                    for conn_id in lost.conn_ids:
                        self._answer(Rejected(conn_id))
                continue
            except ProtocolError as exc:
                log.error("invalid message from the front: %s", exc)
                continue
            self._handle(message, fds)

    def _take(self, conn_id: int, fd: int) -> None:
        """A connection handed over by the front: serve it (or give it back)."""
        server = self.server
        if server.draining:
            os.close(fd)
            self._answer(Rejected(conn_id))
            return
        sock: socket.socket | None = None
        try:
            # Family, type and protocol given, not probed: three syscalls fewer per
            # connection, and TCP is explicit. Trap: a socket rebuilt from a received
            # fd may not carry its protocol; without TCP_NODELAY, Nagle plus delayed
            # ACK adds ~40 ms per response.
            if self._family is None:
                sock = socket.socket(fileno=fd)  # unix sockets or mixed families: ask
            else:
                sock = socket.socket(
                    self._family, socket.SOCK_STREAM, socket.IPPROTO_TCP, fileno=fd
                )
            if sock.family != socket.AF_UNIX:
                sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
        except OSError as exc:
            log.error("received an unusable connection fd: %s", exc)
            # Once a socket object owns the fd, only it may close it: an os.close here
            # and its finaliser later would close the fd twice, the second time
            # perhaps a file another thread (a WSGI app's) has just opened.
            if sock is not None:
                sock.close()
            else:
                os.close(fd)
            self._answer(Taken(conn_id, server.connections_active))
            return
        server.start_connection(sock, self._ack(conn_id))

    def _handle(self, message: Message, fds: list[int]) -> None:
        match message:
            case NewConn(conn_id=conn_id):
                self._take(conn_id, fds[0])
            case NewConns(conn_ids=conn_ids):
                for conn_id, fd in zip(conn_ids, fds, strict=True):
                    self._take(conn_id, fd)
            case Stop(timeout=timeout):
                self.request_stop(timeout)
            case Poll():
                self._answer(self._stats())
            case UserMessage(payload=payload, sender=sender):
                cluster._dispatch(payload, sender)
            case ClusterInfo(worker_count=count):
                cluster.worker_count = count
            case ReopenLogs():
                reopen_log_file()
            case Reply():
                self.calls.reply(message)
            case _:
                close_fds(fds)
                log.error("unexpected message from the front: %r", message)

    def _ack(self, conn_id: int) -> Callable[[], None]:
        def ack() -> None:
            self._answer(Taken(conn_id, self.server.connections_active))

        return ack

    async def _send_user_message(self, payload: object, to: str) -> None:
        worker_id = self.server.worker_id
        try:
            await self.calls.call(
                lambda request_id: UserMessage(payload, to, worker_id, request_id),
                CLUSTER_TIMEOUT,
            )
        except (CallFailed, CallUnanswered) as exc:
            raise cluster.MessageDropped(str(exc)) from None


def _reuseport_own(listener: socket.socket, binds: tuple[str, ...] | list[str]) -> bool:
    """A socket this worker bound itself in a SO_REUSEPORT group (not a shared one)."""
    if not binds or listener.family == socket.AF_UNIX:
        return False
    try:
        return bool(listener.getsockopt(socket.SOL_SOCKET, socket.SO_REUSEPORT))
    except OSError:
        return False
