"""`rrproxy [options] APP`: argument parsing and the one-line errors (exit status 2)."""

from __future__ import annotations

import argparse
import sys
from typing import NoReturn

from . import __version__
from .appload import AppSpecError, parse_app_spec
from .config import POLICIES, Config, ConfigError, WorkerConfig, default_workers
from .logs import LEVELS, setup_logging


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
    parser.add_argument("--log-level", choices=LEVELS, default="info", help="log verbosity")
    parser.add_argument(
        "--app-dir", default=".", help="directory put first on sys.path to import APP"
    )
    parser.add_argument("--version", action="version", version=f"rrproxy {__version__}")
    return parser


def config_from_args(args: argparse.Namespace) -> Config:
    worker = WorkerConfig(
        app=args.app,
        app_dir=args.app_dir,
        policy=args.policy,
        log_level=args.log_level,
        graceful_timeout=args.graceful_timeout,
    )
    return Config(
        worker=worker,
        host=args.host,
        port=args.port,
        workers=args.workers,
        backlog=args.backlog,
    )


def main(argv: list[str] | None = None) -> NoReturn:
    parser = build_parser()
    args = parser.parse_args(argv)
    try:
        parse_app_spec(args.app)
        config = config_from_args(args)
        config.validate()
    except (AppSpecError, ConfigError) as exc:
        parser.error(str(exc))
    setup_logging(config.worker.log_level, "front")
    from .front.main import BindError, run  # trio is imported only to serve

    try:
        code = run(config)
    except BindError as exc:
        parser.error(str(exc))
    except KeyboardInterrupt:
        code = 1
    sys.exit(code)
