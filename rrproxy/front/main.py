"""The front process: bind, boot workers, accept (under `rr`), handle signals, stop."""

from __future__ import annotations

import dataclasses
import errno
import logging
import signal
import socket
import sys

import trio

from ..config import KERNEL_POLICIES, Config, ConfigError
from ..logs import reopen_log_file
from .acceptor import accept_loop
from .admin import AdminServer, bind_admin, default_admin, parse_admin
from .dispatcher import Dispatcher
from .policies import POLICIES
from .supervisor import BootError, RestartStorm, Supervisor

log = logging.getLogger("rrproxy.front")


class BindError(Exception):
    """The public socket cannot be bound; rrproxy exits 2 with this message."""


def bind(config: Config) -> socket.socket:
    try:
        infos = socket.getaddrinfo(
            config.host, config.port, type=socket.SOCK_STREAM, flags=socket.AI_PASSIVE
        )
    except socket.gaierror as exc:
        raise BindError(f"cannot resolve --host {config.host!r}: {exc.strerror}") from None
    family, kind, proto, _, address = infos[0]
    sock = socket.socket(family, kind, proto)
    try:
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        if config.policy == "reuseport":
            sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEPORT, 1)
        if family == socket.AF_INET6:
            sock.setsockopt(socket.IPPROTO_IPV6, socket.IPV6_V6ONLY, 1)
        sock.bind(address)
        if config.policy != "reuseport":
            # Under reuseport the front only holds the port (bound, not listening:
            # it is in no accept group); each worker listens on its own socket.
            sock.listen(config.backlog)
    except OSError as exc:
        sock.close()
        where = f"{config.host}:{config.port}"
        if exc.errno == errno.EADDRINUSE:
            raise BindError(f"cannot bind {where}: address already in use") from None
        if exc.errno == errno.EACCES:
            raise BindError(
                f"cannot bind {where}: permission denied (ports below 1024 need privileges)"
            ) from None
        raise BindError(f"cannot bind {where}: {exc.strerror or exc}") from None
    sock.setblocking(False)
    return sock


def _url(sock: socket.socket) -> str:
    host, port = sock.getsockname()[:2]
    if ":" in host:
        host = f"[{host}]"
    return f"http://{host}:{port}"


def announce(line: str) -> None:
    print(line, flush=True)


class Front:
    def __init__(
        self,
        config: Config,
        listener: socket.socket,
        admin_sock: socket.socket | None = None,
    ) -> None:
        self.config = config
        self.listener = listener
        self.url = _url(listener)
        self.admin = (
            AdminServer(self, admin_sock, config.admin_token) if admin_sock is not None else None
        )
        self.dispatcher: Dispatcher | None = None
        if config.policy not in KERNEL_POLICIES:
            self.dispatcher = Dispatcher(
                POLICIES[config.policy](),
                lambda: self.supervisor.workers,
                config.max_pending,
                config.max_connections,
            )
        self.supervisor = Supervisor(config, listener, self.dispatcher, announce)
        self._accept_scope = trio.CancelScope()
        self._stopping = False
        self._nursery: trio.Nursery | None = None
        self.exit_code = 0

    @property
    def stopping(self) -> bool:
        return self._stopping

    async def run(self) -> None:
        async with trio.open_nursery() as nursery:
            self._nursery = nursery
            nursery.start_soon(self._watch_signals)
            if self.admin is not None:
                # Up before the workers, and independent of them.
                nursery.start_soon(self.admin.serve)
            await nursery.start(self.supervisor.run)
            admin = f", admin {self.config.admin}" if self.config.admin else ""
            announce(
                f"rrproxy: listening on {self.url} "
                f"(policy {self.config.policy}, {self.config.workers} workers{admin})"
            )
            if self.dispatcher is not None:
                nursery.start_soon(self.dispatcher.run)
                nursery.start_soon(self._accept)

    async def _accept(self) -> None:
        assert self.dispatcher is not None
        with self._accept_scope:
            await accept_loop(self.listener, self.dispatcher)

    def request_stop(self, why: str) -> None:
        """Begin the graceful stop (once)."""
        if self._stopping:
            return
        self._stopping = True
        announce(
            f"rrproxy: {why}: shutting down gracefully "
            f"(up to {self.config.worker.graceful_timeout:g} s)"
        )
        assert self._nursery is not None
        self._nursery.start_soon(self._graceful_stop, self._nursery)

    async def _watch_signals(self) -> None:
        watched = (
            signal.SIGINT,
            signal.SIGTERM,
            signal.SIGHUP,
            signal.SIGTTIN,
            signal.SIGTTOU,
            signal.SIGUSR1,
        )
        with trio.open_signal_receiver(*watched) as signals:
            async for signum in signals:
                name = signal.Signals(signum).name
                if signum == signal.SIGUSR1:
                    if reopen_log_file():
                        self.supervisor.router.reopen_logs()
                        log.info("SIGUSR1: log file reopened")
                    continue
                if signum in (signal.SIGHUP, signal.SIGTTIN, signal.SIGTTOU):
                    if self._stopping:
                        log.info("%s ignored: shutting down", name)
                    elif signum == signal.SIGHUP:
                        log.info("SIGHUP: rolling reload")
                        self.supervisor.start_reload()
                    elif signum == signal.SIGTTIN:
                        self.supervisor.scale_up()
                    else:
                        self.supervisor.scale_down()
                    continue
                if not self._stopping:
                    self.request_stop(name)
                elif signum == signal.SIGINT:
                    announce("rrproxy: second SIGINT: stopping now")
                    self.supervisor.kill_all()
                    self.exit_code = 1
                    assert self._nursery is not None
                    self._nursery.cancel_scope.cancel()
                    return

    async def _graceful_stop(self, nursery: trio.Nursery) -> None:
        timeout = self.config.worker.graceful_timeout
        # 1. No new connections: close the public socket.
        self._accept_scope.cancel()
        # 2. Every connection we already accepted goes to a worker before the
        #    workers are told to stop (Stop follows those handoffs on each channel).
        if self.dispatcher is not None:
            with trio.move_on_after(timeout):
                await self.dispatcher.wait_queue_empty()
        trio.lowlevel.notify_closing(self.listener)
        self.listener.close()
        # 3. Workers drain: in-flight requests finish, idle connections close.
        await self.supervisor.shutdown(timeout)
        if self.dispatcher is not None:
            self.dispatcher.close_all()
        announce("rrproxy: stopped")
        nursery.cancel_scope.cancel()


def run(config: Config) -> int:
    """Serve until stopped; the exit status for the CLI."""
    listener = bind(config)
    host, port = listener.getsockname()[:2]
    config = dataclasses.replace(
        config,
        worker=dataclasses.replace(
            config.worker, bind_host=host, bind_port=port, backlog=config.backlog
        ),
    )
    admin_sock = None
    if config.admin != "off":
        try:
            if config.admin is None:
                address = default_admin(listener.getsockname()[1])
            else:
                address = parse_admin(config.admin, config.admin_token)
            admin_sock = bind_admin(address)
        except ConfigError as exc:
            listener.close()
            raise BindError(str(exc)) from None
        config = dataclasses.replace(config, admin=str(address))
    front = Front(config, listener, admin_sock)
    try:
        trio.run(front.run)
    except BaseExceptionGroup as group:
        for kind, code in ((BootError, 2), (RestartStorm, 3)):
            matched = group.subgroup(kind)
            if matched is not None:
                print(f"rrproxy: error: {_first_leaf(matched)}", file=sys.stderr, flush=True)
                return code
        raise
    finally:
        for sock in (listener, admin_sock):
            if sock is not None:
                try:
                    sock.close()
                except OSError:
                    pass
    return front.exit_code


def _first_leaf(group: BaseExceptionGroup) -> BaseException:
    exc: BaseException = group
    while isinstance(exc, BaseExceptionGroup):
        exc = exc.exceptions[0]
    return exc
