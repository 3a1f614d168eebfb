"""`rrproxy status | reload | scale N | stop | dashboard`: talk to a running rrproxy's admin
interface (like `pm2 ls`, `pm2 reload`, `pm2 scale`)."""

from __future__ import annotations

import argparse
import http.client
import json
import os
import socket
import sys
import time
from typing import Any

from rich.console import Console
from rich.live import Live
from rich.table import Table

from .config import ConfigError


class AdminError(Exception):
    """The admin interface cannot be reached or refused the request."""


class _UnixHTTPConnection(http.client.HTTPConnection):
    def __init__(self, path: str, timeout: float) -> None:
        super().__init__("rrproxy", timeout=timeout)
        self.unix_path = path

    def connect(self) -> None:
        sock = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
        sock.settimeout(self.timeout)
        sock.connect(self.unix_path)
        self.sock = sock


class AdminClient:
    """A client of a running rrproxy's admin interface (unix socket or TCP): one
    connection per request, with the bearer token when there is one."""

    def __init__(self, admin: str, token: str | None = None, timeout: float = 10.0) -> None:
        from .adminaddress import parse_admin

        self.address = parse_admin(admin, token or "loopback-check-is-the-server's-job")
        self.token = token
        self.timeout = timeout

    def request(self, method: str, path: str) -> tuple[int, bytes]:
        """One request: the status and the body."""
        status, _, body = self.exchange(method, path)
        return status, body

    def exchange(self, method: str, path: str) -> tuple[int, list[tuple[str, str]], bytes]:
        """One request: the status, the response's headers and its body."""
        address = self.address
        if address.path is not None:
            conn: http.client.HTTPConnection = _UnixHTTPConnection(address.path, self.timeout)
        else:
            assert address.host is not None  # parse_admin() sets a path or a host
            conn = http.client.HTTPConnection(address.host, address.port, timeout=self.timeout)
        headers = {"Authorization": f"Bearer {self.token}"} if self.token else {}
        try:
            conn.request(method, path, headers=headers)
            response = conn.getresponse()
            return response.status, response.getheaders(), response.read()
        except OSError as exc:
            raise AdminError(f"cannot reach the admin interface at {address}: {exc}") from None
        except http.client.HTTPException as exc:
            # Not an admin interface (another server on that port), or one cut off
            # mid-answer: BadStatusLine, IncompleteRead, LineTooLong.
            raise AdminError(
                f"no valid answer from the admin interface at {address}: "
                f"{type(exc).__name__}: {exc}"
            ) from None
        finally:
            conn.close()

    def json(self, method: str, path: str) -> Any:
        """One request answered in JSON: the decoded body. AdminError for an error
        status (with the server's reason) or a body that is not JSON."""
        status, body = self.request(method, path)
        try:
            data = json.loads(body)
        except ValueError:
            raise AdminError(f"{path}: HTTP {status}: {body[:200]!r}") from None
        if status >= 400:
            reason = data.get("error", data) if isinstance(data, dict) else data
            raise AdminError(f"{path}: HTTP {status}: {reason}")
        return data


def _duration(seconds: float | None) -> str:
    if seconds is None:
        return "-"
    seconds = int(seconds)
    if seconds < 60:
        return f"{seconds}s"
    if seconds < 3600:
        return f"{seconds // 60}m{seconds % 60:02d}s"
    if seconds < 86400:
        return f"{seconds // 3600}h{seconds % 3600 // 60:02d}m"
    return f"{seconds // 86400}d{seconds % 86400 // 3600:02d}h"


def _size(count: float) -> str:
    for unit in ("B", "K", "M", "G"):
        if count < 1024 or unit == "G":
            return f"{count:.0f}{unit}" if unit == "B" else f"{count:.1f}{unit}"
        count /= 1024
    return f"{count:.1f}G"


def _percent(value: float | None) -> str:
    return "-" if value is None else f"{value:.0f}%"


def _ms(value: float | None) -> str:
    if value is None:
        return "-"
    return f"{value * 1000:.0f}us" if value < 1 else f"{value:.1f}ms"


def status_table(status: dict[str, Any]) -> Table:
    """The `rrproxy status` table of a /status snapshot: a row per worker slot, then
    one for the whole cluster."""
    now = time.time()
    jain = (status.get("fairness") or {}).get("jain_index")
    table = Table(
        title=f"rrproxy pid {status['pid']} · {status['listening']} · policy {status['policy']}"
        f" · up {_duration(status['uptime_s'])}"
        + (f" · fairness {jain:.3f}" if jain is not None else ""),
        title_justify="left",
        caption="conns: open/total · p50/p99: last 10 s · 2xx/4xx/5xx: responses · "
        "cpu: % of one core · the 'all' row's cpu is the front's",
        caption_justify="left",
    )
    for column in (
        "slot",
        "pid",
        "state",
        "uptime",
        "conns",
        "requests",
        "req/s",
        "p50",
        "p99",
        "2xx/4xx/5xx",
        "cpu",
        "rss",
        "restarts",
        "last exit",
    ):
        table.add_column(column, justify="left" if column in ("state", "last exit") else "right")
    colors = {"ready": "green", "starting": "yellow", "draining": "yellow", "stopped": "red"}
    for worker in status["workers"]:
        started = worker["started_at"]
        classes = worker.get("responses") or {}
        table.add_row(
            str(worker["id"]),
            str(worker["pid"] or "-"),
            f"[{colors.get(worker['state'], 'white')}]{worker['state']}[/]",
            _duration(now - started if started else None),
            f"{worker['connections_active']}/{worker['connections_total']}",
            str(worker["requests_total"]),
            f"{worker['requests_per_s']:.1f}",
            _ms(worker.get("latency_p50_ms")),
            _ms(worker.get("latency_p99_ms")),
            f"{classes.get('2xx', 0)}/{classes.get('4xx', 0)}/{classes.get('5xx', 0)}",
            _percent(worker.get("cpu_percent")),
            _size(worker["rss_bytes"]),
            str(worker["restarts"]),
            worker["last_exit"] or "",
        )
    totals = status["totals"]
    front = status["front"]
    table.add_section()
    table.add_row(
        "all",
        str(status["pid"]),
        f"{totals['ready']}/{totals['workers']} ready",
        "",
        f"{totals['connections_active']}/{totals['connections_total']}",
        str(totals["requests_total"]),
        f"{totals['requests_per_s']:.1f}",
        "",
        "",
        "",
        f"front {_percent(front.get('cpu_percent'))}",
        _size(totals["rss_bytes"]),
        str(totals["restarts"]),
        "",
    )
    return table


def _parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="rrproxy", description="Control a running rrproxy through its admin interface."
    )
    common = argparse.ArgumentParser(add_help=False)
    common.add_argument(
        "--admin",
        metavar="ADDR",
        help="unix:/path or HOST:PORT (default: the private socket of the rrproxy on --port)",
    )
    common.add_argument(
        "--port",
        type=int,
        default=8000,
        help="find the default admin socket of the rrproxy on this port",
    )
    common.add_argument(
        "--admin-token", default=os.environ.get("RRPROXY_ADMIN_TOKEN"), metavar="TOKEN"
    )
    commands = parser.add_subparsers(dest="command", required=True)
    status = commands.add_parser("status", parents=[common], help="show the workers")
    status.add_argument("--watch", action="store_true", help="refresh every second")
    status.add_argument("--json", action="store_true", help="print the raw /status JSON")
    reload = commands.add_parser("reload", parents=[common], help="rolling reload")
    reload.add_argument("--no-wait", action="store_true", help="return at once")
    scale = commands.add_parser("scale", parents=[common], help="set the number of workers")
    scale.add_argument("workers", type=int)
    commands.add_parser("stop", parents=[common], help="graceful shutdown")
    dashboard = commands.add_parser(
        "dashboard",
        parents=[common],
        help="open the live dashboard: a loopback URL with a fresh token",
    )
    dashboard.add_argument(
        "--dashboard-port",
        type=int,
        default=0,
        metavar="N",
        help="loopback port to serve the dashboard on (default: a free one)",
    )
    return parser


def main(argv: list[str]) -> int:
    """Run one control command; the exit status (1 if the admin interface cannot be
    reached or refuses)."""
    args = _parser().parse_args(argv)
    try:
        if args.admin is None:
            from .adminaddress import default_admin

            admin = str(default_admin(args.port))
        else:
            admin = args.admin
        client = AdminClient(admin, args.admin_token)
        return _run(args, client)
    except (AdminError, ConfigError) as exc:
        print(f"rrproxy: error: {exc}", file=sys.stderr)
        return 1
    except KeyboardInterrupt:
        return 0


def _run(args: argparse.Namespace, client: AdminClient) -> int:
    # A pipe or a file gets a table wide enough to read, not 80 columns of ellipses.
    console = Console() if sys.stdout.isatty() else Console(width=160)
    if args.command == "status":
        if args.json:
            print(json.dumps(client.json("GET", "/status"), indent=1))
        elif args.watch:
            with Live(
                status_table(client.json("GET", "/status")), console=console, refresh_per_second=4
            ) as live:
                while True:
                    time.sleep(1.0)
                    live.update(status_table(client.json("GET", "/status")))
        else:
            console.print(status_table(client.json("GET", "/status")))
        return 0
    if args.command == "reload":
        if args.no_wait:
            client.json("POST", "/reload")
            print("rrproxy: reload started")
            return 0
        client.timeout = 3600
        result = client.json("POST", "/reload?wait=1")
        print("rrproxy: reload complete" if result.get("reloaded") else "rrproxy: reload failed")
        return 0 if result.get("reloaded") else 1
    if args.command == "dashboard":
        from .dashboard_link import serve_dashboard

        return serve_dashboard(client, args.dashboard_port)
    if args.command == "scale":
        result = client.json("POST", f"/scale?workers={args.workers}")
        print(f"rrproxy: {result['workers']} workers")
        return 0
    client.json("POST", "/shutdown")
    print("rrproxy: stopping")
    return 0
