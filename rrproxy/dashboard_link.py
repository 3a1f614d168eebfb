"""`rrproxy dashboard`: the live dashboard of an rrproxy whose admin interface is the
default private Unix socket, which a browser cannot open.

It listens on loopback TCP and forwards each request to the admin interface, under a
fresh random token that it prints in the URL's fragment, as Jupyter prints its login
link: `http://127.0.0.1:PORT/#token=...`. A fragment never travels to the server nor
into its logs, and the page sends the token as a Bearer header. Every data request
without it is refused with 401 here, before it reaches rrproxy; only the page's own
files (which hold no data) are served without it. It stops with Ctrl-C.
"""

from __future__ import annotations

import hmac
import json
import secrets
import signal
import sys
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from types import FrameType
from typing import TYPE_CHECKING
from urllib.parse import urlsplit

if TYPE_CHECKING:
    from .control import AdminClient

#: The page and its files: no data in them, so no token needed (front/dashboard.py).
PAGE_PATHS = frozenset({"/", "/index.html", "/dashboard.js", "/dashboard.css"})
#: The admin endpoints take no body; anything larger is refused, not read.
MAX_BODY = 64 * 1024
#: Headers of the admin's answer that are about this hop, not the content.
_HOP_HEADERS = frozenset({"connection", "content-length", "transfer-encoding", "keep-alive"})


def _handler(client: AdminClient, token: str) -> type[BaseHTTPRequestHandler]:
    expected = f"Bearer {token}".encode()

    class Forward(BaseHTTPRequestHandler):
        server_version = "rrproxy-dashboard"
        protocol_version = "HTTP/1.1"
        timeout = 30  # a client that opens a connection and sends nothing

        def log_message(self, format: str, *args: object) -> None:
            pass  # no request log: nothing here is worth one, and it keeps URLs private

        def _answer(self, status: int, headers: list[tuple[str, str]], body: bytes) -> None:
            self.send_response(status)
            for name, value in headers:
                if name.lower() not in _HOP_HEADERS:
                    self.send_header(name, value)
            self.send_header("Content-Length", str(len(body)))
            self.send_header("Connection", "close")
            self.end_headers()
            self.wfile.write(body)
            self.close_connection = True

        def _refuse(self, status: int, error: str) -> None:
            body = json.dumps({"error": error}).encode() + b"\n"
            self._answer(
                status,
                [("Content-Type", "application/json"), ("Cache-Control", "no-store")],
                body,
            )

        def _forward(self) -> None:
            try:
                length = int(self.headers.get("Content-Length") or 0)
            except ValueError:
                return self._refuse(400, "bad Content-Length")
            if length < 0 or length > MAX_BODY or "Transfer-Encoding" in self.headers:
                return self._refuse(413, "the admin interface takes no request body")
            self.rfile.read(length)
            path = urlsplit(self.path).path
            page = self.command == "GET" and path in PAGE_PATHS
            given = (self.headers.get("Authorization") or "").encode("latin-1", "replace")
            if not page and not hmac.compare_digest(given, expected):
                return self._refuse(401, "missing or wrong dashboard token")
            try:
                status, headers, body = client.exchange(self.command, self.path)
            except Exception as exc:  # rrproxy stopped or restarting: say so, keep serving
                return self._refuse(502, f"rrproxy's admin interface: {exc}")
            self._answer(status, headers, body)

        do_GET = do_POST = do_PUT = do_DELETE = do_PATCH = _forward

    return Forward


def serve_dashboard(client: AdminClient, port: int = 0) -> int:
    """Serve until Ctrl-C (or SIGTERM); the exit status."""
    client.json("GET", "/status")  # rrproxy is there (AdminError otherwise)
    token = secrets.token_urlsafe(24)
    server = ThreadingHTTPServer(("127.0.0.1", port), _handler(client, token))
    server.daemon_threads = True

    def stop(signum: int, frame: FrameType | None) -> None:
        raise KeyboardInterrupt

    signal.signal(signal.SIGTERM, stop)
    host, bound = server.server_address[:2]
    assert isinstance(host, str)  # an AF_INET server's address: (str, int)
    print(
        f"rrproxy dashboard: http://{host}:{bound}/#token={token}\n"
        "  (open it in a browser on this machine; Ctrl-C stops it)",
        flush=True,
    )
    try:
        server.serve_forever()
    except KeyboardInterrupt:
        pass
    finally:
        server.server_close()
    print("rrproxy dashboard: stopped", file=sys.stderr, flush=True)
    return 0
