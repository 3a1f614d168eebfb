"""The admin interface, served by the front (so it answers while all workers are
down): GET /status, GET /metrics, POST /reload, POST /scale?workers=N, POST /shutdown,
and the live dashboard's page at / (front/dashboard.py).

By default it listens on a Unix socket of mode 0600 in a 0700 directory; on TCP a
token is required, and every request must carry it.
"""

from __future__ import annotations

import hmac
import json
import logging
import os
import socket
import stat
from typing import TYPE_CHECKING, Any
from urllib.parse import parse_qs, urlsplit

import h11
import trio

from ..adminaddress import AdminAddress, default_admin, parse_admin
from ..config import ConfigError
from ..listeners import Address, BindError, bind_listener
from ..protocol.http import reason
from .dashboard import DATA_HEADERS, PAGE_HEADERS, dashboard_asset
from .status import snapshot

if TYPE_CHECKING:
    from .main import Front

log = logging.getLogger("rrproxy.admin")

_MAX_HEAD = 8 * 1024
_REQUEST_TIMEOUT = 5.0
MAX_WORKERS = 1024


def bind_admin(address: AdminAddress) -> socket.socket:
    """The admin listener for --admin: a 0600 Unix socket, or a TCP address (which always needs a
    token). ConfigError when it cannot be bound."""
    try:
        if address.path is not None:
            # Mode 0600 from the start (no moment where others could connect).
            return bind_listener(Address("unix", path=address.path), 1024, uds_mode=0o600)
        return bind_listener(Address("tcp", host=address.host or "", port=address.port), 1024)
    except BindError as exc:
        raise ConfigError(f"--admin: {exc}") from None


class AdminServer:
    """The admin interface: /status, /metrics, /reload, /scale, the dashboard. Every request needs
    the token unless it comes over the 0600 Unix socket; one request per connection."""

    def __init__(self, front: Front, sock: socket.socket, token: str | None) -> None:
        self.front = front
        self.sock = sock
        self.token = token
        self.path = sock.getsockname() if sock.family == socket.AF_UNIX else None
        #: (device, inode) of the socket file we made: on the way out we remove it
        #: only if it is still ours (not a file someone put there since).
        self._identity: tuple[int, int] | None = None
        if isinstance(self.path, str):
            info = os.stat(self.path)
            self._identity = (info.st_dev, info.st_ino)

    async def serve(self) -> None:
        """Serve until cancelled, then remove the Unix socket file if it is still the
        one we made."""
        listener = trio.SocketListener(trio.socket.from_stdlib_socket(self.sock))
        try:
            await trio.serve_listeners(self._serve_one, [listener])
        finally:
            if isinstance(self.path, str):
                try:
                    info = os.lstat(self.path)
                    if stat.S_ISSOCK(info.st_mode) and (info.st_dev, info.st_ino) == (
                        self._identity
                    ):
                        os.unlink(self.path)
                except OSError:
                    pass

    async def _serve_one(self, stream: trio.SocketStream) -> None:
        try:
            with trio.fail_after(_REQUEST_TIMEOUT):
                request = await _read_request(stream)
            if request is None:
                return
            method, target, headers = request
            page = dashboard_asset(method, target)
            if page is not None:
                # The dashboard's shell holds no data, so it needs no token: the page
                # reads the token from the URL's fragment and sends it on every call.
                await _respond(stream, 200, page.body, page.content_type, PAGE_HEADERS)
            else:
                status, body, content_type = await self._route(method, target, headers)
                await _respond(stream, status, body, content_type, DATA_HEADERS)
        except (
            trio.TooSlowError,
            trio.BrokenResourceError,
            trio.ClosedResourceError,
            h11.RemoteProtocolError,
        ):
            pass
        except Exception:
            log.exception("admin request failed")
        finally:
            await stream.aclose()

    async def _route(
        self, method: bytes, target: bytes, headers: dict[bytes, bytes]
    ) -> tuple[int, bytes, str]:
        if self.token is not None:
            given = headers.get(b"authorization", b"")
            expected = b"Bearer " + self.token.encode()
            if not hmac.compare_digest(given, expected):
                return _json(401, {"error": "missing or wrong admin token"})
        url = urlsplit(target.decode("latin-1"))
        query = parse_qs(url.query)
        front = self.front
        supervisor = front.supervisor
        routes = {
            "/status": b"GET",
            "/metrics": b"GET",
            "/reload": b"POST",
            "/scale": b"POST",
            "/shutdown": b"POST",
        }
        if url.path not in routes:
            return _json(404, {"error": f"no such endpoint {url.path}"})
        if method != routes[url.path]:
            return _json(405, {"error": f"{url.path} takes {routes[url.path].decode()}"})
        if url.path == "/status":
            await supervisor.router.poll()
            return _json(200, snapshot(front, with_history=query.get("history") == ["1"]))
        if url.path == "/metrics":
            # prometheus_client is imported when first asked for, not at start: a front
            # nobody scrapes does not carry it (issue 20: lean processes).
            from . import metrics

            await supervisor.router.poll()
            return 200, metrics.render(snapshot(front)), metrics.CONTENT_TYPE
        if front.stopping:
            return _json(409, {"error": "rrproxy is shutting down"})
        if url.path == "/reload":
            if supervisor.reloading:
                return _json(409, {"error": "a reload is already under way"})
            if query.get("wait") == ["1"]:
                ok = await supervisor.replacer.reload()
                return _json(200 if ok else 500, {"reloaded": ok})
            if not supervisor.start_reload():
                return _json(409, {"error": "a reload is already under way"})
            return _json(202, {"reloading": True})
        if url.path == "/scale":
            text = query.get("workers", [""])[0]
            if not (text.isascii() and text.isdigit() and len(text) <= 6):
                return _json(400, {"error": "use /scale?workers=N"})
            count = int(text)
            if not 1 <= count <= MAX_WORKERS:
                return _json(400, {"error": f"workers must be 1..{MAX_WORKERS}"})
            supervisor.scale_to(count)
            return _json(200, {"workers": supervisor.worker_count})
        front.request_stop("admin /shutdown")
        return _json(202, {"stopping": True})


def _json(status: int, data: Any) -> tuple[int, bytes, str]:
    return status, json.dumps(data, indent=1).encode() + b"\n", "application/json"


async def _read_request(
    stream: trio.SocketStream,
) -> tuple[bytes, bytes, dict[bytes, bytes]] | None:
    conn = h11.Connection(h11.SERVER, max_incomplete_event_size=_MAX_HEAD)
    request: h11.Request | None = None
    while True:
        event = conn.next_event()
        if event is h11.NEED_DATA:
            data = await stream.receive_some(_MAX_HEAD)
            conn.receive_data(data)
            continue
        if isinstance(event, h11.Request):
            request = event
        elif isinstance(event, h11.EndOfMessage) and request is not None:
            return request.method, request.target, dict(request.headers)
        elif isinstance(event, h11.ConnectionClosed):
            return None


async def _respond(
    stream: trio.SocketStream, status: int, body: bytes, content_type: str, extra: str
) -> None:
    head = (
        f"HTTP/1.1 {status} {reason(status).decode()}\r\n"
        f"content-type: {content_type}\r\ncontent-length: {len(body)}\r\n"
        f"{extra}connection: close\r\n\r\n"
    ).encode()
    await stream.send_all(head + body)


__all__ = ["AdminAddress", "AdminServer", "bind_admin", "default_admin", "parse_admin"]
