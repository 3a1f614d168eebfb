"""Listening sockets: what `--bind` names (HOST:PORT, unix:PATH, fd://N) and binding
them, for the front and for `reuseport` workers alike."""

from __future__ import annotations

import enum
import errno
import os
import socket
import stat
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any, TypeVar

from .config import ConfigError


@dataclass(frozen=True)
class Address:
    """One --bind address: a TCP host and port, a Unix socket path, or an inherited fd."""

    kind: str  # "tcp", "unix" or "fd"
    host: str = ""
    port: int = 0
    path: str = ""
    fd: int = -1

    def __str__(self) -> str:
        if self.kind == "unix":
            return f"unix:{self.path}"
        if self.kind == "fd":
            return f"fd://{self.fd}"
        host = f"[{self.host}]" if ":" in self.host else self.host
        return f"{host}:{self.port}"


_C_INT_MAX = 2**31 - 1


def _digits(text: str, most: int) -> bool:
    """ASCII digits, at most `most` of them."""
    return text.isascii() and text.isdigit() and len(text) <= most


def parse_bind(text: str) -> Address:
    """HOST:PORT, [IPV6]:PORT, unix:PATH or fd://N; ConfigError otherwise."""
    if text.startswith("unix:"):
        if not text[5:]:
            raise ConfigError("--bind unix: needs a path")
        return Address("unix", path=os.path.abspath(text[5:]))
    if text.startswith("fd://"):
        number = text[5:]
        # An fd is a C int (a larger one was a ValueError from socket.socket), and
        # int() refuses over 4300 digits (ValueError): both were tracebacks.
        if not _digits(number, 10) or int(number) > _C_INT_MAX:
            raise ConfigError(f"--bind fd://N needs a file descriptor number, got {text!r}")
        return Address("fd", fd=int(number))
    host, sep, port = text.rpartition(":")
    if not sep or not _digits(port, 5) or int(port) > 65535:
        raise ConfigError(f"--bind must be HOST:PORT, unix:PATH or fd://N, got {text!r}")
    return Address("tcp", host=host.strip("[]") or "0.0.0.0", port=int(port))


def systemd_fds(environ: dict[str, str] | None = None) -> list[int]:
    """Sockets passed by systemd socket activation (LISTEN_FDS from fd 3, meant for
    this process if LISTEN_PID says so)."""
    environ = dict(os.environ) if environ is None else environ
    count = environ.get("LISTEN_FDS", "")
    pid = environ.get("LISTEN_PID", "")
    if not count.isdigit() or (pid and pid != str(os.getpid())):
        return []
    return list(range(3, 3 + int(count)))


class BindError(Exception):
    """A listening socket cannot be had; rrproxy exits 2 with this message."""


def bind_listener(
    address: Address,
    backlog: int,
    *,
    reuseport: bool = False,
    listen: bool = True,
    uds_mode: int = 0o660,
) -> socket.socket:
    """A listening socket for `address` (nonblocking, not inheritable). With
    `reuseport`, the socket joins the port's SO_REUSEPORT group; `listen=False` only
    holds the port (the front under reuseport)."""
    if address.kind == "fd":
        return _adopt(address.fd)
    if address.kind == "unix":
        return _bind_unix(address.path, backlog, uds_mode)
    try:
        infos = socket.getaddrinfo(
            address.host, address.port, type=socket.SOCK_STREAM, flags=socket.AI_PASSIVE
        )
    except socket.gaierror as exc:
        raise BindError(f"cannot resolve {address.host!r}: {exc.strerror}") from None
    family, kind, proto, _, sockaddr = infos[0]
    sock = socket.socket(family, kind, proto)
    try:
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        if reuseport:
            sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEPORT, 1)
        if family == socket.AF_INET6:
            sock.setsockopt(socket.IPPROTO_IPV6, socket.IPV6_V6ONLY, 1)
        sock.bind(sockaddr)
        if listen:
            sock.listen(backlog)
    except OSError as exc:
        sock.close()
        raise BindError(_why(str(address), exc)) from None
    sock.setblocking(False)
    return sock


def _why(where: str, exc: OSError) -> str:
    if exc.errno == errno.EADDRINUSE:
        return f"cannot bind {where}: address already in use"
    if exc.errno == errno.EACCES:
        return f"cannot bind {where}: permission denied (ports below 1024 need privileges)"
    return f"cannot bind {where}: {exc.strerror or exc}"


def _adopt(fd: int) -> socket.socket:
    try:
        sock = socket.socket(fileno=fd)
    except OSError as exc:
        raise BindError(f"fd://{fd} is not a socket: {exc.strerror or exc}") from None
    if sock.type != socket.SOCK_STREAM:
        sock.detach()
        raise BindError(f"fd://{fd} is not a stream socket")
    try:
        listening = sock.getsockopt(socket.SOL_SOCKET, socket.SO_ACCEPTCONN)
    except OSError:
        listening = 0
    if not listening:
        sock.detach()
        raise BindError(f"fd://{fd} is not a listening socket")
    sock.set_inheritable(False)
    sock.setblocking(False)
    return sock


def _bind_unix(path: str, backlog: int, mode: int) -> socket.socket:
    try:
        info = os.lstat(path)
    except FileNotFoundError:
        info = None
    if info is not None:
        # Only a stale socket may be replaced: never delete a file that is not one.
        if not stat.S_ISSOCK(info.st_mode):
            raise BindError(f"cannot bind unix:{path}: the path exists and is not a socket")
        probe = socket.socket(socket.AF_UNIX)
        try:
            probe.connect(path)
        except ConnectionRefusedError:
            os.unlink(path)  # left behind by a server that is gone
        except OSError as exc:
            raise BindError(f"cannot bind unix:{path}: {exc.strerror or exc}") from None
        else:
            raise BindError(f"cannot bind unix:{path}: another server listens there")
        finally:
            probe.close()
    sock = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
    old_umask = os.umask(0o177)  # nobody can connect before the chmod below
    try:
        sock.bind(path)
        os.chmod(path, mode)
        sock.listen(backlog)
    except OSError as exc:
        sock.close()
        raise BindError(f"cannot bind unix:{path}: {exc.strerror or exc}") from None
    finally:
        os.umask(old_umask)
    sock.setblocking(False)
    return sock


def url_of(sock: socket.socket) -> str:
    """How a listening socket is shown to users: http://host:port, or unix:PATH."""
    name = sock.getsockname()
    if sock.family == socket.AF_UNIX:
        return f"unix:{name}"
    host, port = name[:2]
    if ":" in host:
        host = f"[{host}]"
    return f"http://{host}:{port}"


# --- accepting ----------------------------------------------------------------------

#: Out of fds or memory: the caller logs, pauses and retries (as trio's
#: serve_listeners does); the connection stays in the backlog meanwhile.
RESOURCE_ERRNOS = frozenset({errno.EMFILE, errno.ENFILE, errno.ENOMEM, errno.ENOBUFS})
#: The client gave up (or a firewall refused it) before we accepted: skip it.
CLIENT_GONE_ERRNOS = frozenset({errno.ECONNABORTED, errno.EPROTO, errno.EPERM})

_Accepted = TypeVar("_Accepted")


class AcceptEnd(enum.Enum):
    """Why accept_batch stopped."""

    #: Nothing more is queued: wait until the listener is readable.
    DRAINED = "drained"
    #: `limit` connections accepted; more may be queued.
    LIMIT = "limit"
    #: Out of fds or memory (RESOURCE_ERRNOS): pause, then retry.
    OUT_OF_RESOURCES = "out of resources"
    #: The listener cannot accept any more (closed under us while draining: EBADF,
    #: EINVAL; any other errno is just as final for this socket).
    CLOSED = "closed"


def accept_batch(
    accept: Callable[[], tuple[_Accepted, Any]], limit: int, into: list[tuple[_Accepted, Any]]
) -> tuple[AcceptEnd, OSError | None]:
    """Accept up to `limit` connections without waiting, appending (connection,
    address) pairs to `into`; why it stopped, and the error when CLOSED or
    OUT_OF_RESOURCES. `accept` is a non-blocking listener's accept (or CPython's
    `_accept`, for raw fds): the one errno policy for the front's `rr` loop and the
    workers' `none` and `reuseport` loops."""
    taken = 0
    while taken < limit:
        try:
            into.append(accept())
        except BlockingIOError:
            return AcceptEnd.DRAINED, None
        except OSError as exc:
            if exc.errno in CLIENT_GONE_ERRNOS:
                continue
            if exc.errno in RESOURCE_ERRNOS:
                return AcceptEnd.OUT_OF_RESOURCES, exc
            return AcceptEnd.CLOSED, exc
        taken += 1
    return AcceptEnd.LIMIT, None
