"""Where the admin interface listens (a private unix socket by default, or a TCP
address that needs a token), parsed without importing the server: `rrproxy status`
and the CLI use this too."""

from __future__ import annotations

import ipaddress
import logging
import os
import stat
import tempfile
from dataclasses import dataclass

from .config import ConfigError

log = logging.getLogger("rrproxy.admin")


@dataclass(frozen=True)
class AdminAddress:
    """A unix socket's `path`, or a TCP `host` and `port`; str() gives it back in the
    form --admin takes."""

    path: str | None = None
    host: str | None = None
    port: int = 0

    def __str__(self) -> str:
        if self.path is not None:
            return f"unix:{self.path}"
        host = f"[{self.host}]" if self.host and ":" in self.host else self.host
        return f"{host}:{self.port}"


def runtime_dir() -> str:
    """A private (0700) directory for default admin sockets."""
    base = os.environ.get("XDG_RUNTIME_DIR")
    if base and os.path.isdir(base) and os.access(base, os.W_OK):
        path = os.path.join(base, "rrproxy")
    else:
        path = os.path.join(tempfile.gettempdir(), f"rrproxy-{os.getuid()}")
    os.makedirs(path, mode=0o700, exist_ok=True)
    info = os.stat(path)
    if info.st_uid != os.getuid() or stat.S_IMODE(info.st_mode) & 0o077:
        raise ConfigError(f"{path} must be a directory of yours with mode 0700")
    return path


def default_admin(name: int | str) -> AdminAddress:
    """The default admin socket for a server on port `name` (or a unix socket's name)."""
    return AdminAddress(path=os.path.join(runtime_dir(), f"admin-{name}.sock"))


def parse_admin(text: str, token: str | None = None) -> AdminAddress:
    """ "unix:/path" or "HOST:PORT". A non-loopback host needs a token."""
    if text.startswith("unix:"):
        path = text[5:]
        if not path:
            raise ConfigError("--admin unix: needs a path")
        return AdminAddress(path=os.path.abspath(path))
    host, sep, port_text = text.rpartition(":")
    host = host.strip("[]")
    if not sep or not host or not port_text.isdigit() or int(port_text) > 65535:
        raise ConfigError(f"--admin must be unix:/path or HOST:PORT, got {text!r}")
    if not token:
        # Even on loopback: every local user (and every process of every container
        # sharing the network namespace) can reach a TCP port, and /shutdown stops
        # the server. A unix socket is private by its file mode; a port is not.
        raise ConfigError(
            f"--admin {text}: a TCP admin address needs --admin-token (or "
            "$RRPROXY_ADMIN_TOKEN): any local user can reach a port; the default unix "
            "socket needs none"
        )
    if not _is_loopback(host):
        log.warning("admin interface on a non-loopback address %s: keep the token secret", text)
    return AdminAddress(host=host, port=int(port_text))


def _is_loopback(host: str) -> bool:
    if host == "localhost":
        return True
    try:
        return ipaddress.ip_address(host).is_loopback
    except ValueError:
        return False


__all__ = ["AdminAddress", "default_admin", "parse_admin", "runtime_dir"]
