"""`rrproxy [options] APP`: argument parsing and the one-line errors (exit status 2)."""

from __future__ import annotations

import argparse
import os
import sys
from typing import NoReturn

from . import __version__
from .appload import AppSpecError, parse_app_spec
from .config import (
    LOOPS,
    POLICIES,
    Config,
    ConfigError,
    WorkerConfig,
    default_workers,
    parse_size,
)
from .fdlimit import raise_fd_limit
from .logs import FORMATS, LEVELS, setup_logging

CONTROL_COMMANDS = ("status", "reload", "scale", "stop")


class _Parser(argparse.ArgumentParser):
    def error(self, message: str) -> NoReturn:
        # One clear line, not argparse's usage dump.
        self.exit(2, f"rrproxy: error: {message}\n")


def build_parser() -> argparse.ArgumentParser:
    parser = _Parser(
        prog="rrproxy",
        description=(
            "Serve a Python web app from N worker processes behind one trio front "
            "process that owns the port and hands each connection to a worker "
            "(Node.js cluster for Python)."
        ),
        formatter_class=argparse.ArgumentDefaultsHelpFormatter,
    )
    parser.add_argument(
        "app",
        metavar="APP",
        help="the handler as module:attribute, e.g. workers.hello:handler "
        "(imported in each worker, from --app-dir)",
    )
    parser.add_argument("--host", default="127.0.0.1", help="address to bind")
    parser.add_argument("--port", type=int, default=8000, help="port to bind (0: pick a free one)")
    parser.add_argument(
        "--workers",
        type=int,
        default=default_workers(),
        help="worker processes (default: the number of CPUs this process may use)",
    )
    parser.add_argument(
        "--policy",
        choices=POLICIES,
        default="rr",
        help="rr: the front accepts and hands connections round-robin (Node's SCHED_RR); "
        "none: workers accept from the shared socket, the kernel balances (SCHED_NONE)",
    )
    parser.add_argument("--backlog", type=int, default=2048, help="listen() backlog")
    parser.add_argument(
        "--graceful-timeout",
        type=float,
        default=30.0,
        metavar="SECONDS",
        help="on shutdown, time in-flight requests get to finish before workers are killed",
    )
    limits = parser.add_argument_group(
        "limits", "what one client may cost; see 'Limits and errors' in the README"
    )
    limits.add_argument(
        "--max-header-size",
        type=_size,
        default="16K",
        metavar="SIZE",
        help="request line + headers larger than this: 431 and close",
    )
    limits.add_argument(
        "--max-headers",
        type=int,
        default=100,
        metavar="N",
        help="header lines in a request (or its trailers) above this: 431 and close",
    )
    limits.add_argument(
        "--max-body-size",
        type=_size,
        default="1M",
        metavar="SIZE",
        help="request body larger than this: 413 (a larger Content-Length is refused unread)",
    )
    limits.add_argument(
        "--header-timeout",
        type=float,
        default=10.0,
        metavar="SECONDS",
        help="headers (or the next piece of a body) not received within this: 408 and close",
    )
    limits.add_argument(
        "--keep-alive",
        type=float,
        default=5.0,
        metavar="SECONDS",
        help="idle keep-alive connections are closed after this",
    )
    limits.add_argument(
        "--send-timeout",
        type=float,
        default=30.0,
        metavar="SECONDS",
        help="a client that takes no response bytes for this long is disconnected",
    )
    limits.add_argument(
        "--limit-concurrency",
        type=int,
        default=None,
        metavar="N",
        help="per worker: a connection above N open ones gets 503 at once "
        "(under rr the front prefers workers below N)",
    )
    limits.add_argument(
        "--max-connections",
        type=int,
        default=10000,
        metavar="N",
        help="open connections in all; above it new ones wait in the kernel backlog",
    )
    lifecycle = parser.add_argument_group(
        "lifecycle", "reload, recycling and health (see 'Signals' in the README)"
    )
    lifecycle.add_argument(
        "--timeout",
        type=float,
        default=30.0,
        metavar="SECONDS",
        help="a worker whose event loop sends no heartbeat for this long is killed and "
        "replaced (0: never)",
    )
    lifecycle.add_argument(
        "--ready-timeout",
        type=float,
        default=60.0,
        metavar="SECONDS",
        help="a new worker not ready within this fails (at boot: rrproxy exits; "
        "on reload: the reload is aborted and the old workers keep serving)",
    )
    lifecycle.add_argument(
        "--reload-batch",
        type=int,
        default=1,
        metavar="N",
        help="workers replaced at a time by a rolling reload (SIGHUP)",
    )
    lifecycle.add_argument(
        "--max-memory",
        type=_size,
        default="0",
        metavar="SIZE",
        help="recycle a worker whose resident memory exceeds SIZE, e.g. 512M (0: never)",
    )
    lifecycle.add_argument(
        "--max-requests",
        type=int,
        default=0,
        metavar="N",
        help="recycle a worker after N requests (0: never)",
    )
    lifecycle.add_argument(
        "--max-requests-jitter",
        type=int,
        default=0,
        metavar="J",
        help="add a random 0..J to --max-requests per worker, so they do not recycle together",
    )
    lifecycle.add_argument(
        "--handoff-timeout",
        type=float,
        default=5.0,
        metavar="SECONDS",
        help="a worker that is stopped (SIGSTOP, a debugger) while connections handed to it "
        "wait is killed after this, and the connections it never read go to another "
        "worker (0: never)",
    )
    asgi = parser.add_argument_group("ASGI", "running ASGI 3 apps (Starlette, FastAPI...)")
    asgi.add_argument(
        "--interface",
        choices=("auto", "native", "asgi", "wsgi"),
        default="auto",
        help="auto: an async callable taking (scope, receive, send) is ASGI 3, a callable "
        "taking (environ, start_response) WSGI, one taking (request) the native handler API",
    )
    asgi.add_argument(
        "--threads",
        type=int,
        default=1,
        metavar="N",
        help="WSGI apps: threads per worker running the app (the event loop does the I/O)",
    )
    asgi.add_argument(
        "--loop",
        choices=LOOPS,
        default=os.environ.get("RRPROXY_LOOP", "auto"),
        help="the workers' event loop: auto runs native handlers on trio and ASGI apps on "
        "asyncio, with uvloop when it is installed (pip install 'rrproxy[uvloop]'); "
        "default: $RRPROXY_LOOP or auto",
    )
    asgi.add_argument(
        "--lifespan",
        choices=("auto", "on", "off"),
        default="auto",
        help="ASGI lifespan: auto runs it if the app supports it",
    )
    asgi.add_argument(
        "--root-path",
        default="",
        metavar="PATH",
        help="ASGI root_path, for apps mounted below a prefix by a proxy",
    )
    asgi.add_argument(
        "--ws-max-size",
        type=_size,
        default="16M",
        metavar="SIZE",
        help="largest WebSocket message accepted (above it: close 1009)",
    )
    asgi.add_argument(
        "--ws-ping-interval",
        type=float,
        default=20.0,
        metavar="SECONDS",
        help="ping idle WebSocket clients this often (0: never)",
    )
    asgi.add_argument(
        "--ws-ping-timeout",
        type=float,
        default=20.0,
        metavar="SECONDS",
        help="close a WebSocket whose ping is not answered within this",
    )
    parser.add_argument(
        "--proxy-protocol",
        action="store_true",
        help="expect HAProxy's PROXY protocol (v1 or v2) on every connection, for the "
        "real client address behind a load balancer",
    )
    parser.add_argument(
        "--forwarded-allow-ips",
        default="127.0.0.1,::1",
        metavar="IPS",
        help="comma-separated addresses or networks (or *) whose X-Forwarded-For and "
        "X-Forwarded-Proto headers are believed",
    )
    parser.add_argument(
        "--state",
        default="memory",
        metavar="URL",
        help="backend of rrproxy.state: memory (held by the front, shared by all workers) "
        "or redis://[:password@]host:port/db (rediss:// for TLS; password also from "
        "$RRPROXY_REDIS_PASSWORD)",
    )
    parser.add_argument(
        "--state-max-memory",
        type=_size,
        default="256M",
        metavar="SIZE",
        help="with --state memory: bytes the front may hold for rrproxy.state (keys and "
        "encoded values); a set beyond it raises StateFull in the handler",
    )
    observe = parser.add_argument_group("observability", "admin interface and logs")
    observe.add_argument(
        "--admin",
        default=None,
        metavar="ADDR",
        help="admin interface: unix:/path (created 0600) or HOST:PORT (loopback unless "
        "--admin-token is set), or off (default: a private unix socket, "
        "$XDG_RUNTIME_DIR/rrproxy/admin-PORT.sock or /tmp/rrproxy-UID/admin-PORT.sock)",
    )
    observe.add_argument(
        "--admin-token",
        default=os.environ.get("RRPROXY_ADMIN_TOKEN"),
        metavar="TOKEN",
        help="require 'Authorization: Bearer TOKEN' on every admin request "
        "(default: $RRPROXY_ADMIN_TOKEN)",
    )
    observe.add_argument(
        "--log-format",
        choices=FORMATS,
        default="text",
        help="text lines or one JSON object per line",
    )
    observe.add_argument(
        "--access-log",
        action="store_true",
        help="log every request: client, method, path, status, bytes, duration, worker",
    )
    observe.add_argument(
        "--log-file",
        default=None,
        metavar="PATH",
        help="append logs here instead of stderr; SIGUSR1 reopens it",
    )
    parser.add_argument(
        "--debug",
        action="store_true",
        help="show tracebacks in 500 responses (never in production)",
    )
    parser.add_argument("--log-level", choices=LEVELS, default="info", help="log verbosity")
    parser.add_argument(
        "--app-dir", default=".", help="directory put first on sys.path to import APP"
    )
    parser.add_argument("--version", action="version", version=f"rrproxy {__version__}")
    return parser


def _size(text: str) -> int:
    try:
        return parse_size(text)
    except ConfigError as exc:
        raise argparse.ArgumentTypeError(str(exc)) from None


def config_from_args(args: argparse.Namespace) -> Config:
    workers = max(args.workers, 1)
    worker = WorkerConfig(
        app=args.app,
        app_dir=args.app_dir,
        policy=args.policy,
        log_level=args.log_level,
        graceful_timeout=args.graceful_timeout,
        keep_alive=args.keep_alive,
        header_timeout=args.header_timeout,
        max_header_size=args.max_header_size,
        max_headers=args.max_headers,
        max_body_size=args.max_body_size,
        send_timeout=args.send_timeout,
        limit_concurrency=args.limit_concurrency,
        # Under `none` nobody sees the total: each worker keeps to its share.
        max_connections=-(-args.max_connections // workers),
        max_requests=args.max_requests,
        max_requests_jitter=args.max_requests_jitter,
        debug=args.debug,
        access_log=args.access_log,
        state=args.state,
        proxy_protocol=args.proxy_protocol,
        forwarded_allow_ips=tuple(
            ip.strip() for ip in args.forwarded_allow_ips.split(",") if ip.strip()
        ),
        interface=args.interface,
        threads=args.threads,
        heartbeat_timeout=args.timeout,
        loop=args.loop,
        lifespan=args.lifespan,
        root_path=args.root_path.rstrip("/"),
        ws_max_size=args.ws_max_size,
        ws_ping_interval=args.ws_ping_interval,
        ws_ping_timeout=args.ws_ping_timeout,
        log_format=args.log_format,
        log_file=os.path.abspath(args.log_file) if args.log_file else None,
    )
    return Config(
        worker=worker,
        host=args.host,
        port=args.port,
        workers=args.workers,
        backlog=args.backlog,
        max_connections=args.max_connections,
        timeout=args.timeout,
        ready_timeout=args.ready_timeout,
        reload_batch=args.reload_batch,
        max_memory=args.max_memory,
        handoff_timeout=args.handoff_timeout,
        state_max_memory=args.state_max_memory,
        admin=args.admin,
        admin_token=args.admin_token,
    )


def main(argv: list[str] | None = None) -> NoReturn:
    argv = sys.argv[1:] if argv is None else argv
    if argv and argv[0] in CONTROL_COMMANDS:
        from .control import main as control_main

        sys.exit(control_main(argv))
    parser = build_parser()
    args = parser.parse_args(argv)
    try:
        parse_app_spec(args.app)
        if args.state != "memory":
            from .redis_state import parse_url

            try:
                parse_url(args.state)
            except ValueError as exc:
                raise ConfigError(str(exc)) from None
        config = config_from_args(args)
        config.validate()
    except (AppSpecError, ConfigError) as exc:
        parser.error(str(exc))
    if config.worker.loop == "uvloop":
        try:
            import uvloop  # noqa: F401
        except ImportError:
            parser.error("--loop uvloop needs uvloop: pip install 'rrproxy[uvloop]'")
    if config.admin not in (None, "off"):
        try:
            from .front.admin import parse_admin

            parse_admin(config.admin, config.admin_token)
        except ConfigError as exc:
            parser.error(str(exc))
    worker = config.worker
    try:
        setup_logging(
            worker.log_level,
            {"pid": os.getpid()},
            worker.log_format,
            worker.log_file,
            worker.access_log,
        )
    except OSError as exc:
        parser.error(f"cannot open --log-file: {exc}")
    raise_fd_limit()
    from .front.main import BindError, run  # trio is imported only to serve

    try:
        code = run(config)
    except BindError as exc:
        parser.error(str(exc))
    except KeyboardInterrupt:
        code = 1
    sys.exit(code)
