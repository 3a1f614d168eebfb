"""The front process: bind, boot workers, accept (under the front's policies), handle
signals, stop."""

from __future__ import annotations

import dataclasses
import logging
import os
import signal
import socket
import sys

import trio

from ..adminaddress import default_admin, parse_admin
from ..config import KERNEL_POLICIES, Config, ConfigError
from ..ipc.messages import LATENCY_BUCKETS
from ..listeners import Address, BindError, bind_listener, parse_bind, url_of
from ..logs import format_line, reopen_log_file
from .acceptor import accept_loop
from .admin import AdminServer, bind_admin
from .custom_policy import load_policy
from .dispatcher import Dispatcher
from .history import History, Sample
from .policies import Policy
from .spawner import BootError
from .status import snapshot
from .supervisor import RestartStorm, Supervisor

log = logging.getLogger("rrproxy.front")

#: Seconds between two samples of the cluster's counters (the dashboard's resolution).
SAMPLE_INTERVAL = 1.0

#: How the front's own lines look: set by run() from --log-format.
_JSON = False


def announce(line: str, level: str = "info") -> None:
    """A start-up, shutdown or fatal line: on stdout (stderr for errors), as one JSON
    object with --log-format json, so that every line of the stream is JSON."""
    print(format_line(line, level, _JSON), file=sys.stderr if level == "error" else sys.stdout,
          flush=True)  # fmt: skip


def bind_all(config: Config) -> list[socket.socket]:
    """Every listening socket --bind names. Under reuseport the front only holds the
    TCP ports (bound, not listening: each worker listens on its own socket); unix
    and inherited sockets are shared with the workers instead."""
    sockets: list[socket.socket] = []
    try:
        for text in config.binds:
            address = parse_bind(text)
            reuseport = config.policy == "reuseport" and address.kind == "tcp"
            sockets.append(
                bind_listener(
                    address,
                    config.backlog,
                    reuseport=reuseport,
                    listen=not reuseport,
                    uds_mode=config.uds_mode,
                )
            )
    except (BindError, ConfigError):
        for sock in sockets:
            sock.close()
        raise
    return sockets


class Front:
    """The front process on trio: its listeners, the supervisor of the workers, the
    dispatcher when the front places connections itself (not under none/reuseport,
    where the kernel does), the admin server, and the order of a stop."""

    def __init__(
        self,
        config: Config,
        listeners: list[socket.socket],
        admin_sock: socket.socket | None = None,
        policy: Policy | None = None,
    ) -> None:
        self.config = config
        self.listeners = listeners
        self.url = " and ".join(url_of(sock) for sock in listeners)
        self.admin = (
            AdminServer(self, admin_sock, config.admin_token) if admin_sock is not None else None
        )
        self.dispatcher: Dispatcher | None = None
        if policy is not None:
            self.dispatcher = Dispatcher(
                policy,
                lambda: self.supervisor.workers,
                config.max_held,
                config.max_connections,
            )
        shared = [
            s
            for s in listeners
            if config.policy == "none" or (config.policy == "reuseport" and not _is_tcp(s))
        ]
        self.supervisor = Supervisor(config, shared, self.dispatcher, announce)
        #: Rates and recent percentiles for /status and the dashboard.
        self.history = History(LATENCY_BUCKETS)
        self._accept_scope = trio.CancelScope()
        self._stopping = False
        self._nursery: trio.Nursery | None = None
        self.exit_code = 0

    @property
    def stopping(self) -> bool:
        """A graceful stop has begun (the admin's /reload, /scale and /shutdown then
        answer 409)."""
        return self._stopping

    async def run(self) -> None:
        """Boot the workers, then accept and supervise until the stop is done (or a
        second SIGINT cuts it short); BootError or RestartStorm end it early."""
        async with trio.open_nursery() as nursery:
            self._nursery = nursery
            nursery.start_soon(self._watch_signals)
            nursery.start_soon(self._sample_history)
            if self.admin is not None:
                # Up before the workers, and independent of them.
                nursery.start_soon(self.admin.serve)
            await nursery.start(self.supervisor.run)
            if self._stopping:
                # A stop came during boot: _graceful_stop has closed the listeners
                # already, so there is nothing to announce and nothing to accept from.
                return
            admin = f", admin {self.config.admin}" if self.config.admin else ""
            announce(
                f"rrproxy: listening on {self.url} "
                f"(policy {self.config.policy}, {self.config.workers} workers{admin})"
            )
            if self.dispatcher is not None:
                nursery.start_soon(self.dispatcher.run)
                nursery.start_soon(self._accept)
            if self.config.reload:
                from .reloader import watch

                nursery.start_soon(watch, self.config, self.supervisor)

    async def _sample_history(self) -> None:
        """Once a second, the counters the workers last reported (they send Stats every
        second by themselves) and the CPU times from /proc: a few small file reads."""
        while True:
            self.history.record(Sample.from_status(trio.current_time(), snapshot(self)))
            await trio.sleep(SAMPLE_INTERVAL)

    async def _accept(self) -> None:
        assert self.dispatcher is not None
        with self._accept_scope:
            async with trio.open_nursery() as nursery:
                for listener in self.listeners:
                    nursery.start_soon(accept_loop, listener, self.dispatcher)

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
        # 1. No new connections: stop accepting.
        self._accept_scope.cancel()
        # 2. Every connection we already accepted goes to a worker before the
        #    workers are told to stop (Stop follows those handoffs on each channel).
        if self.dispatcher is not None:
            with trio.move_on_after(timeout):
                await self.dispatcher.wait_queue_empty()
        for listener in self.listeners:
            trio.lowlevel.notify_closing(listener)
            listener.close()
        # 3. Workers drain: in-flight requests finish, idle connections close.
        await self.supervisor.shutdown(timeout)
        if self.dispatcher is not None:
            self.dispatcher.close_all()
        announce("rrproxy: stopped")
        nursery.cancel_scope.cancel()


def _is_tcp(sock: socket.socket) -> bool:
    return sock.family in (socket.AF_INET, socket.AF_INET6)


def run(config: Config) -> int:
    """Serve until stopped; the exit status for the CLI."""
    global _JSON
    _JSON = config.worker.log_format == "json"
    # Socket activation's variables were for this process (sd_listen_fds(unset=1)):
    # the workers and whatever they start must not take the sockets for theirs.
    for name in ("LISTEN_FDS", "LISTEN_PID", "LISTEN_FDNAMES"):
        os.environ.pop(name, None)
    listeners = bind_all(config)
    owned = _owned_unix_paths(config)
    admin_sock: socket.socket | None = None
    # Everything after the bind is inside this try: whatever fails (a bad --policy,
    # an admin address that cannot be bound, a crash), the sockets are closed and the
    # unix socket files this front made are removed, as gunicorn does at exit.
    try:
        config, admin_sock, policy = _prepare(config, listeners)
        if admin_sock is not None and admin_sock.family == socket.AF_UNIX:
            owned.update(_inodes([admin_sock.getsockname()]))
        _set_title(f"rrproxy: front {config.worker.app} [{' '.join(url_of(s) for s in listeners)}]")
        front = Front(config, listeners, admin_sock, policy)
        trio.run(front.run)
    except BaseExceptionGroup as group:
        for kind, code in ((BootError, 2), (RestartStorm, 3)):
            matched = group.subgroup(kind)
            if matched is not None:
                announce(f"rrproxy: error: {_first_leaf(matched)}", "error")
                return code
        raise
    finally:
        for open_sock in (*listeners, admin_sock):
            if open_sock is not None:
                try:
                    open_sock.close()
                except OSError:
                    pass
        _remove_unix_paths(owned)
    return front.exit_code


def _prepare(
    config: Config, listeners: list[socket.socket]
) -> tuple[Config, socket.socket | None, Policy | None]:
    """The config completed from the bound listeners, the admin socket, and the
    policy; BindError if the admin address or the policy is unusable."""
    policy = None if config.policy in KERNEL_POLICIES else load_policy(config.policy)
    tcp = [s for s in listeners if _is_tcp(s)]
    families = {s.family for s in listeners}
    reuseport = [
        f"{s.getsockname()[0]}:{s.getsockname()[1]}" if s.family == socket.AF_INET
        else f"[{s.getsockname()[0]}]:{s.getsockname()[1]}"
        for s in tcp
        if config.policy == "reuseport"
    ]  # fmt: skip
    first = tcp[0].getsockname()[:2] if tcp else ("localhost", 0)
    config = dataclasses.replace(
        config,
        worker=dataclasses.replace(
            config.worker,
            bind_host=first[0],
            bind_port=first[1],
            backlog=config.backlog,
            reuseport_binds=tuple(reuseport),
            mixed_families=len(families) > 1 or socket.AF_UNIX in families,
        ),
    )
    if config.admin == "off":
        return config, None, policy
    try:
        if config.admin is None:
            address = default_admin(first[1] if tcp else _unix_name(listeners[0]))
        else:
            address = parse_admin(config.admin, config.admin_token)
        admin_sock = bind_admin(address)
    except ConfigError as exc:
        raise BindError(str(exc)) from None
    return dataclasses.replace(config, admin=str(address)), admin_sock, policy


def _owned_unix_paths(config: Config) -> dict[str, int]:
    """The unix sockets this front bound, by inode: removed when it stops (as gunicorn
    does), unless another server has bound the path since."""
    paths = []
    for text in config.binds:
        address = parse_bind(text)
        if address.kind == "unix" and address.path is not None:
            paths.append(address.path)
    return _inodes(paths)


def _inodes(paths: list[str]) -> dict[str, int]:
    owned = {}
    for path in paths:
        if isinstance(path, str) and path and not path.startswith("\0"):
            try:
                owned[path] = os.stat(path).st_ino
            except OSError:
                pass
    return owned


def _remove_unix_paths(owned: dict[str, int]) -> None:
    for path, inode in owned.items():
        try:
            if os.stat(path).st_ino == inode:
                os.unlink(path)
        except OSError:
            pass


def _unix_name(sock: socket.socket) -> str:
    name = str(sock.getsockname())
    return "".join(c if c.isalnum() else "-" for c in name).strip("-")[-40:] or "unix"


def _set_title(title: str) -> None:
    """`ps` shows what each process is, with setproctitle (rrproxy[proctitle])."""
    try:
        import setproctitle
    except ImportError:
        return
    setproctitle.setproctitle(title)


def _first_leaf(group: BaseExceptionGroup) -> BaseException:
    exc: BaseException = group
    while isinstance(exc, BaseExceptionGroup):
        exc = exc.exceptions[0]
    return exc


__all__ = ["Address", "BindError", "Front", "announce", "run"]
