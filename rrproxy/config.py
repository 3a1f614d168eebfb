"""Configuration: one dataclass, filled by the CLI, validated here, and the subset
the workers need sent to them as JSON in the Configure message."""

from __future__ import annotations

import dataclasses
import math
import os
import re
from dataclasses import dataclass
from typing import Any

#: rr, least-conn, ip-hash: the front accepts and picks a worker (front/policies.py).
#: none: workers accept from one shared socket; reuseport: each worker binds its own
#: SO_REUSEPORT socket. In both the kernel picks.
POLICIES = ("rr", "none", "reuseport", "least-conn", "ip-hash")
LOOPS = ("auto", "trio", "asyncio", "uvloop")
#: A custom policy: module:Class (implementing front/policies.Policy).
_CUSTOM_POLICY = re.compile(r"[A-Za-z_][\w.]*:[A-Za-z_][\w.]*")
KERNEL_POLICIES = ("none", "reuseport")


class ConfigError(ValueError):
    """An invalid option; the CLI prints it on one line and exits 2."""


def default_workers() -> int:
    """The default --workers: the CPUs this process may run on (its affinity, which a
    container's cpuset narrows), else the machine's count."""
    try:
        return len(os.sched_getaffinity(0))
    except (AttributeError, OSError):
        return os.cpu_count() or 1


#: The fields --access-log-format may use, with a sample value each.
ACCESS_LOG_SAMPLE: dict[str, object] = {
    "client": "127.0.0.1:5000",
    "method": "GET",
    "path": "/",
    "status": 200,
    "bytes": 0,
    "duration_ms": 1.0,
    "worker": 1,
}


@dataclass(frozen=True)
class WorkerConfig:
    """What a worker needs: sent over the channel, so JSON-compatible fields only."""

    app: str
    app_dir: str = "."
    policy: str = "rr"
    log_level: str = "info"
    graceful_timeout: float = 30.0
    keep_alive: float = 5.0
    header_timeout: float = 10.0
    max_header_size: int = 16 * 1024
    #: Header lines a request (or its trailers) may have: above it, 431.
    max_headers: int = 100
    max_body_size: int = 1024 * 1024
    send_timeout: float = 30.0
    #: Per worker: above this many open connections a new one is answered 503.
    limit_concurrency: int | None = None
    #: Per worker, under `none` only: stop accepting at this many open connections,
    #: its share of --max-connections (gunicorn's --worker-connections is the same
    #: idea). Under `rr` the front enforces --max-connections itself.
    worker_connections: int | None = None
    #: Recycle the worker after this many requests (+ a random 0..jitter); 0: never.
    max_requests: int = 0
    max_requests_jitter: int = 0
    stats_interval: float = 1.0
    #: The first TCP address listened on (the front's real port): what a WSGI app is
    #: told it serves when the socket cannot say.
    bind_host: str = ""
    bind_port: int = 0
    #: Under reuseport, the TCP addresses ("host:port", real ports) each worker binds
    #: itself; the other listeners are shared (sent with Configure).
    reuseport_binds: tuple[str, ...] | list[str] = ()
    #: Handed-over connections may be unix sockets or of mixed families: the worker
    #: asks each fd what it is instead of assuming one TCP family.
    mixed_families: bool = False
    backlog: int = 2048
    #: APP is a factory to call (maybe async) for the app.
    factory: bool = False
    #: TLS in the workers (all None/empty: plain HTTP).
    ssl_certfile: str | None = None
    ssl_keyfile: str | None = None
    ssl_keyfile_password: str | None = None
    ssl_ca_certs: str | None = None
    ssl_cert_reqs: str = "none"
    ssl_ciphers: str | None = None
    ssl_handshake_timeout: float = 10.0
    access_log_format: str = '{client} "{method} {path}" {status} {bytes} {duration_ms}ms'
    log_config: str | None = None
    debug: bool = False
    access_log: bool = False
    #: Expect a PROXY protocol (v1/v2) header on every connection.
    proxy_protocol: bool = False
    #: Peers whose X-Forwarded-For / X-Forwarded-Proto are believed.
    forwarded_allow_ips: tuple[str, ...] | list[str] = ("127.0.0.1", "::1")
    #: rrproxy.state backend: "memory" (the front) or a redis:// URL (each worker).
    state: str = "memory"
    #: "auto", "native", "asgi" or "wsgi" (what the app is), and the ASGI options.
    interface: str = "auto"
    #: The workers' event loop: "auto" (trio for native handlers, asyncio/uvloop for
    #: ASGI and WSGI apps), "trio", "asyncio" or "uvloop".
    loop: str = "auto"
    #: WSGI apps: threads per worker running the app (gunicorn's gthread --threads).
    threads: int = 1
    #: The front's --timeout, so a worker whose every WSGI thread is stuck can stop
    #: its heartbeat in time (0: never).
    heartbeat_timeout: float = 30.0
    lifespan: str = "auto"
    root_path: str = ""
    ws_max_size: int = 16 * 1024 * 1024
    ws_ping_interval: float = 20.0
    ws_ping_timeout: float = 20.0
    log_format: str = "text"
    log_file: str | None = None

    def to_dict(self) -> dict[str, Any]:
        """The fields for the Configure message (its tuples arrive as lists)."""
        return dataclasses.asdict(self)

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> WorkerConfig:
        """Back from to_dict(): keys this version does not know are ignored, and
        missing ones take their defaults."""
        names = {f.name for f in dataclasses.fields(cls)}
        return cls(**{k: v for k, v in data.items() if k in names})


@dataclass(frozen=True)
class Config:
    """Everything a run of rrproxy is configured with: the front's settings here,
    the workers' in `worker`."""

    worker: WorkerConfig
    #: What to listen on: "HOST:PORT", "unix:PATH", "fd://N" (see listeners.py).
    binds: tuple[str, ...] = ("127.0.0.1:8000",)
    #: File mode of unix sockets listened on.
    uds_mode: int = 0o660
    #: Extra environment for the workers (--env-file).
    env: tuple[tuple[str, str], ...] = ()
    #: Workers forked from a zygote (rrproxy/zygote.py) instead of fresh interpreters;
    #: with preload, the zygote imports the app too.
    fork_server: bool = False
    preload: bool = False
    #: Serve once "all" workers are ready, or the "first" one.
    ready_strategy: str = "all"
    #: --reload: watch these directories for changes matching includes/excludes.
    reload: bool = False
    reload_dirs: tuple[str, ...] = ()
    reload_includes: tuple[str, ...] = ("*.py",)
    reload_excludes: tuple[str, ...] = (".*", "*.pyc", "__pycache__")
    workers: int = dataclasses.field(default_factory=default_workers)
    backlog: int = 2048
    #: Connections the front may hold that no worker has taken yet (queued for a
    #: worker, or handed and not yet acknowledged). Above it the front stops
    #: accepting and new connections wait in the kernel backlog.
    max_held: int = 4096
    #: All open connections (held by the front or served by workers); above it the
    #: front stops accepting and new connections wait in the kernel backlog.
    max_connections: int = 10000
    #: Seconds without a heartbeat before a worker counts as hung (0: never).
    timeout: float = 30.0
    #: Seconds a new worker gets to report ready (at boot and on replacement).
    ready_timeout: float = 60.0
    #: Workers replaced at once during a rolling reload.
    reload_batch: int = 1
    #: Recycle a worker whose resident memory exceeds this many bytes (0: never).
    max_memory: int = 0
    #: A stopped worker (SIGSTOP) holding handed connections this long is killed and
    #: the connections go to another worker (0: never).
    handoff_timeout: float = 5.0
    #: Bytes the `--state memory` store may hold (keys + encoded values + overhead).
    state_max_memory: int = 256 * 1024 * 1024
    #: "unix:/path", "HOST:PORT", "off", or None for the default private socket.
    admin: str | None = None
    admin_token: str | None = None

    @property
    def policy(self) -> str:
        """--policy (kept in `worker`, as the workers need it too)."""
        return self.worker.policy

    def validate(self) -> None:
        """ConfigError naming the first option out of its range, or an
        --access-log-format that does not format."""
        try:
            self.worker.access_log_format.format(**ACCESS_LOG_SAMPLE)
        except (KeyError, IndexError, ValueError, AttributeError) as exc:
            raise ConfigError(
                f"--access-log-format: {type(exc).__name__}: {exc} (fields: "
                f"{', '.join(ACCESS_LOG_SAMPLE)})"
            ) from None
        if self.workers < 1:
            raise ConfigError(f"--workers must be at least 1, got {self.workers}")
        if self.worker.policy not in POLICIES and not _CUSTOM_POLICY.fullmatch(self.policy):
            raise ConfigError(
                f"--policy must be one of {', '.join(POLICIES)}, or module:Class for your own"
            )
        if self.backlog < 1:
            raise ConfigError(f"--backlog must be at least 1, got {self.backlog}")
        if self.backlog > 2**31 - 1:
            # listen() takes a C int (OverflowError beyond); the kernel caps it at
            # net.core.somaxconn anyway.
            raise ConfigError(f"--backlog must be at most 2147483647, got {self.backlog}")
        if not 0 <= self.uds_mode <= 0o777:
            raise ConfigError(
                f"--uds-mode must be between 0 and 777 (octal), got {self.uds_mode:o}"
            )
        worker = self.worker
        # The parsers refuse inf and nan, but a Config made in Python skips them, and a
        # nan would slip through every comparison below.
        for flag, seconds in self._durations():
            if not math.isfinite(seconds):
                raise ConfigError(f"--{flag} must be a finite number of seconds, got {seconds}")
        for name in (
            "keep_alive",
            "header_timeout",
            "send_timeout",
            "ssl_handshake_timeout",
            "ws_ping_timeout",
        ):
            if getattr(worker, name) <= 0:
                raise ConfigError(f"--{name.replace('_', '-')} must be positive")
        if worker.graceful_timeout < 0:
            raise ConfigError("--graceful-timeout must not be negative")
        if self.timeout < 0:
            raise ConfigError("--timeout must not be negative (0 disables it)")
        if worker.max_header_size < 1024:
            raise ConfigError("--max-header-size must be at least 1K")
        if worker.threads < 1 or worker.threads > 1024:
            raise ConfigError("--threads must be between 1 and 1024")
        if worker.max_headers < 1:
            raise ConfigError("--max-headers must be at least 1")
        if worker.max_body_size < 0:
            raise ConfigError("--max-body-size must not be negative")
        # A limit of 0 would close every WebSocket that sends a non-empty message (1009).
        if worker.ws_max_size < 1:
            raise ConfigError("--ws-max-size must be at least 1")
        if worker.ws_ping_interval < 0:
            raise ConfigError("--ws-ping-interval must not be negative (0 disables pings)")
        if self.max_memory < 0:
            raise ConfigError("--max-memory must not be negative (0 disables it)")
        if worker.limit_concurrency is not None and worker.limit_concurrency < 1:
            raise ConfigError("--limit-concurrency must be at least 1")
        if self.ready_timeout <= 0:
            raise ConfigError("--ready-timeout must be positive")
        if self.reload_batch < 1:
            raise ConfigError("--reload-batch must be at least 1")
        if worker.max_requests < 0 or worker.max_requests_jitter < 0:
            raise ConfigError("--max-requests and --max-requests-jitter must not be negative")
        if self.handoff_timeout < 0:
            raise ConfigError("--handoff-timeout must not be negative (0 disables it)")
        if self.state_max_memory < 1024 * 1024:
            raise ConfigError("--state-max-memory must be at least 1M")
        if self.max_connections < self.workers:
            raise ConfigError("--max-connections must be at least --workers")

    def _durations(self) -> tuple[tuple[str, float], ...]:
        """Every option in seconds, by its flag (--timeout is the workers'
        heartbeat_timeout too)."""
        worker = self.worker
        return (
            ("graceful-timeout", worker.graceful_timeout),
            ("keep-alive", worker.keep_alive),
            ("header-timeout", worker.header_timeout),
            ("send-timeout", worker.send_timeout),
            ("ssl-handshake-timeout", worker.ssl_handshake_timeout),
            ("ws-ping-interval", worker.ws_ping_interval),
            ("ws-ping-timeout", worker.ws_ping_timeout),
            ("timeout", self.timeout),
            ("ready-timeout", self.ready_timeout),
            ("handoff-timeout", self.handoff_timeout),
        )


_UNITS = {
    "": 1,
    "b": 1,
    "k": 1024,
    "kb": 1024,
    "kib": 1024,
    "m": 1024**2,
    "mb": 1024**2,
    "mib": 1024**2,
    "g": 1024**3,
    "gb": 1024**3,
    "gib": 1024**3,
}


def parse_size(text: str) -> int:
    """ "16K", "1M", "2G", "512MiB" or a plain number of bytes."""
    stripped = text.strip().lower()
    number = stripped.rstrip("kmgib")
    unit = stripped[len(number) :]
    try:
        value = float(number) * _UNITS[unit]
    except (ValueError, KeyError):
        value = math.nan
    # float() takes "inf", "nan" and "1e400" (inf), which int() cannot convert.
    if not math.isfinite(value) or value < 0:
        raise ConfigError(f"invalid size {text!r} (examples: 16K, 1M, 2G)")
    return int(value)
