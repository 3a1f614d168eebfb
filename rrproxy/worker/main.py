"""Worker process entry: `python -m rrproxy.worker --fd N --slot K`.

A fresh interpreter (never a fork of the trio front): it says Hello over its
channel, receives its configuration, imports the app, reports Ready, then serves
connections handed over by the front (or accepted from the shared socket) until the
front says Stop or goes away.
"""

from __future__ import annotations

import argparse
import gc
import logging
import os
import random
import signal
import socket
import sys

import trio

from .. import cluster, state
from ..appload import AppLoadError, detect_interface, is_coroutine_callable, load_app
from ..config import KERNEL_POLICIES, WorkerConfig
from ..fdlimit import raise_fd_limit
from ..ipc.channel import ChannelClosed, FdLost, WorkerChannel
from ..ipc.messages import (
    PROTOCOL_VERSION,
    ClusterInfo,
    Configure,
    Failed,
    Hello,
    Load,
    Message,
    NewConn,
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
from ..logs import reopen_log_file, setup_logging
from .asgi import Lifespan, LifespanFailed
from .calls import CallFailed, CallUnanswered, FrontCalls
from .server import WorkerServer

log = logging.getLogger("rrproxy.worker")

#: Exit status for "cannot boot" (same convention as gunicorn's WORKER_BOOT_ERROR).
EXIT_BOOT_ERROR = 3
#: Minimum time between two Load reports (closes are coalesced in between).
LOAD_REPORT_INTERVAL = 0.01
#: How long a cluster message waits for the front to confirm delivery.
CLUSTER_TIMEOUT = 5.0


class Worker:
    """Owns the worker's channel, its server and the order of shutdown."""

    def __init__(
        self,
        channel: WorkerChannel,
        server: WorkerServer,
        listener: socket.socket | None,
        lifespan: Lifespan | None = None,
    ) -> None:
        self.lifespan = lifespan
        host = server.config.bind_host
        self._family = socket.AF_INET6 if ":" in host else socket.AF_INET
        self.channel = channel
        self.server = server
        self.listener = listener
        self._stop = trio.Event()
        self._stop_timeout = server.config.graceful_timeout
        self._nursery: trio.Nursery | None = None
        self.calls = FrontCalls(channel.send)

    def ask_to_retire(self, reason: str) -> None:
        """Ask the front for a replacement; keep serving until it says Stop."""
        log.info("asking to be replaced: %s", reason)
        try:
            self._send(Retire(reason))
        except ChannelClosed:
            pass

    def request_stop(self, timeout: float | None = None) -> None:
        if timeout is not None:
            self._stop_timeout = timeout
        self._stop.set()

    async def run(self) -> int:
        """Serve until stopped; the process exit status."""
        async with trio.open_nursery() as nursery:
            self._nursery = nursery
            cluster.install(self._send_user_message, nursery.start_soon)
            backend = self.server.config.state
            if backend == "memory":
                state.install(state.FrontBackend(self.calls))
            else:
                from ..redis_state import RedisBackend

                state.install(RedisBackend(backend))
            nursery.start_soon(self._flush_channel)
            await nursery.start(self.server.serve)
            nursery.start_soon(self._read_channel)
            nursery.start_soon(self._report_stats)
            if self.server.config.policy not in KERNEL_POLICIES:
                # Only the front's own policies use live counts (least-conn,
                # --limit-concurrency, --max-connections); under none/reuseport the
                # periodic Stats are enough, but for one Load when the first client
                # arrives: a worker that served someone never counts toward a
                # restart storm, even if it dies before its first Stats.
                nursery.start_soon(self._report_load)
            else:
                self.server.on_first_connection = lambda: self._answer(Load(1))
            nursery.start_soon(self.server.sweep_disconnects)
            nursery.start_soon(self._watch_signals)
            if self.lifespan is not None:
                # Before Ready: under rr no connection arrives before startup is done.
                try:
                    await self.lifespan.startup(nursery, self.server.config.graceful_timeout)
                except LifespanFailed as exc:
                    await self.channel.send(
                        Failed("lifespan", f"ASGI lifespan startup failed: {exc}")
                    )
                    nursery.cancel_scope.cancel()
                    return EXIT_BOOT_ERROR
            accept_scope = trio.CancelScope()
            accept_done = trio.Event()
            if self.listener is not None:
                nursery.start_soon(self._accept, accept_scope, accept_done)
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
            await self.server.drain(self._stop_timeout)
            if self.lifespan is not None:
                await self.lifespan.shutdown(min(self._stop_timeout, 30.0) or 1.0)
            log.info(
                "stopped after %d connections, %d requests",
                self.server.connections_total,
                self.server.requests_total,
            )
            try:
                self._send(self._stats())
                with trio.move_on_after(1.0):
                    await self.channel.flush()
            except ChannelClosed:
                pass
            nursery.cancel_scope.cancel()
        return 0

    async def _accept(self, scope: trio.CancelScope, done: trio.Event) -> None:
        listener = self.listener
        assert listener is not None
        try:
            with scope:
                await self.server.accept_loop(listener)
            if self.server.config.policy == "reuseport":
                # Our own queue: what the kernel already put in it is served here
                # (with Connection: close) rather than reset when the socket closes.
                self.server.accept_pending(listener)
        finally:
            trio.lowlevel.notify_closing(listener)
            listener.close()
            done.set()

    async def _flush_channel(self) -> None:
        await self.channel.run_flusher()
        # The front is gone (the reader sees the EOF and drains): nothing to do.

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

    def _send(self, message: Taken | Rejected | Stats | Load | Retire) -> None:
        """Send from synchronous code; if the front's queue is full, the flusher
        task sends it when there is room (order kept)."""
        self.channel.send_nowait(message)

    async def _report_stats(self) -> None:
        # Sent from the event loop on purpose: it is also the heartbeat, so a loop
        # blocked by a handler falls silent and the front can tell.
        interval = self.server.config.stats_interval
        while True:
            await trio.sleep(interval)
            try:
                self._send(self._stats())
            except ChannelClosed:
                return

    async def _report_load(self) -> None:
        """Tell the front when connections close, one message per burst of closes:
        it needs current counts for --max-connections and --limit-concurrency."""
        server = self.server
        while True:
            await server.load_changed.wait()
            server.load_changed = trio.Event()
            try:
                self._send(Load(server.connections_active))
            except ChannelClosed:
                return
            # Closes in the next moment go into the next report: at most one Load
            # per LOAD_REPORT_INTERVAL, well inside the front's HOLD_FOR_ROOM.
            await trio.sleep(LOAD_REPORT_INTERVAL)

    async def _watch_signals(self) -> None:
        with trio.open_signal_receiver(signal.SIGTERM) as signals:
            async for _ in signals:
                log.info("SIGTERM: draining")
                self.request_stop()

    async def _read_channel(self) -> None:
        channel = self.channel
        while True:
            try:
                message, fd = await channel.receive()
            except ChannelClosed:
                self.calls.fail_all("the front process went away")
                # The front is gone: no orphans. Finish what we have and exit.
                if not self._stop.is_set():
                    log.warning("front process went away; draining and exiting")
                self.request_stop()
                return
            except FdLost as exc:
                # Out of fds: give the connection back; the front still holds it.
                log.warning("out of file descriptors: returning a connection to the front")
                if isinstance(exc.message, NewConn):
                    self._answer(Rejected(exc.message.conn_id))
                continue
            except ProtocolError as exc:
                log.error("invalid message from the front: %s", exc)
                continue
            self._handle(message, fd)

    def _handle(self, message: Message, fd: int | None) -> None:
        server = self.server
        match message:
            case NewConn(conn_id=conn_id):
                assert fd is not None
                if server.draining:
                    os.close(fd)
                    self._answer(Rejected(conn_id))
                    return
                try:
                    # Family, type and protocol given, not probed: three syscalls fewer
                    # per connection, and TCP is explicit (see the TCP_NODELAY trap).
                    sock = socket.socket(
                        self._family, socket.SOCK_STREAM, socket.IPPROTO_TCP, fileno=fd
                    )
                except OSError as exc:
                    log.error("received an unusable connection fd: %s", exc)
                    os.close(fd)
                    self._answer(Taken(conn_id, server.connections_active))
                    return
                server.start_connection(sock, self._ack(conn_id))
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
                if fd is not None:
                    os.close(fd)
                log.error("unexpected message from the front: %r", message)

    def _ack(self, conn_id: int):
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

    def _answer(self, message: Taken | Rejected | Load | Stats) -> None:
        try:
            self._send(message)
        except ChannelClosed:
            pass


async def _main(sock: socket.socket, slot: int) -> int:
    channel = WorkerChannel(sock)
    await channel.send(Hello(PROTOCOL_VERSION, os.getpid()))
    message, fd = None, None
    with trio.move_on_after(60):
        message, fd = await channel.receive()
    if isinstance(message, Stop):
        return 0  # stopped before it started (rrproxy is shutting down)
    if not isinstance(message, Configure):
        print(f"rrproxy worker {slot}: expected Configure, got {message!r}", file=sys.stderr)
        return EXIT_BOOT_ERROR
    config = WorkerConfig.from_dict(message.config)
    setup_logging(
        config.log_level,
        {"worker": message.worker_id, "pid": os.getpid()},
        config.log_format,
        config.log_file,
        config.access_log,
    )
    cluster.worker_id = message.worker_id
    cluster.worker_count = message.worker_count
    listener = socket.socket(fileno=fd) if fd is not None else None
    if config.policy == "reuseport":
        try:
            listener = _bind_reuseport(config)
        except OSError as exc:
            await channel.send(
                Failed(
                    "bind",
                    f"cannot bind {config.bind_host}:{config.bind_port} with SO_REUSEPORT: {exc}",
                )
            )
            return EXIT_BOOT_ERROR
    try:
        handler = load_app(config.app, config.app_dir)
    except AppLoadError as exc:
        await channel.send(Failed("app", str(exc)))
        return EXIT_BOOT_ERROR
    # Everything imported so far (trio, h11, the app) lives as long as the worker:
    # move it out of the collector's sight, so full collections stay short.
    gc.collect()
    gc.freeze()
    retire_after = 0
    if config.max_requests > 0:
        retire_after = config.max_requests + random.randint(0, config.max_requests_jitter)
    interface = detect_interface(handler, config.interface)
    server = WorkerServer(
        config,
        message.worker_id,
        handler,
        is_coroutine_callable(handler),
        retire_after,
        interface=interface,
    )
    lifespan = None
    if interface == "asgi":
        lifespan = Lifespan(handler, config.lifespan, server.asgi_state)
    worker = Worker(channel, server, listener, lifespan)
    server.on_retire = worker.ask_to_retire
    return await worker.run()


def _bind_reuseport(config: WorkerConfig) -> socket.socket:
    """This worker's own socket in the port's SO_REUSEPORT group: the kernel hashes
    each new connection to one of the group's listening sockets."""
    family = socket.AF_INET6 if ":" in config.bind_host else socket.AF_INET
    sock = socket.socket(family, socket.SOCK_STREAM)
    try:
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEPORT, 1)
        if family == socket.AF_INET6:
            sock.setsockopt(socket.IPPROTO_IPV6, socket.IPV6_V6ONLY, 1)
        sock.bind((config.bind_host, config.bind_port))
        sock.listen(config.backlog)
    except OSError:
        sock.close()
        raise
    return sock


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(prog="rrproxy-worker")
    parser.add_argument("--fd", type=int, required=True)
    parser.add_argument("--slot", type=int, required=True)
    args = parser.parse_args(argv)
    # Ctrl-C reaches the whole process group; the front decides what happens.
    signal.signal(signal.SIGINT, signal.SIG_IGN)
    raise_fd_limit()
    # The channel came through pass_fds, which makes it inheritable: a handler's
    # os.system() child must not hold it (the front would never see our EOF).
    os.set_inheritable(args.fd, False)
    sock = socket.socket(fileno=args.fd)
    try:
        code = trio.run(_main, sock, args.slot)
    except ChannelClosed:
        code = EXIT_BOOT_ERROR  # the front went away before we were configured
    sys.exit(code)
