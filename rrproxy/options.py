"""Every option of `rrproxy` once: its flags, type, default, help and group. The
command line, the environment (RRPROXY_<NAME>) and config files (rrproxy.toml, or
[tool.rrproxy] in pyproject.toml) are all read through this table (sources.py)."""

from __future__ import annotations

import math
import os
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

from .config import LOOPS, ConfigError, default_workers, parse_size
from .logs import FORMATS, LEVELS


def _int(text: str) -> int:
    try:
        return int(text)
    except ValueError:
        raise ConfigError(f"expected a whole number, got {text!r}") from None


def _float(text: str) -> float:
    try:
        seconds = float(text)
    except ValueError:
        seconds = math.nan
    # float() also takes "inf", "nan" and "1e400": no timeout or interval means that.
    if not math.isfinite(seconds):
        raise ConfigError(f"expected a number of seconds, got {text!r}")
    return seconds


def _bool(text: str) -> bool:
    lowered = text.strip().lower()
    if lowered in ("1", "true", "yes", "on"):
        return True
    if lowered in ("0", "false", "no", "off", ""):
        return False
    raise ConfigError(f"expected true or false, got {text!r}")


def _str(text: str) -> str:
    return text


def _optional_int(text: str) -> int | None:
    return None if text.strip().lower() in ("", "none", "off") else _int(text)


def _mode(text: str) -> int:
    try:
        return int(text, 8)
    except ValueError:
        raise ConfigError(f"expected an octal file mode such as 660, got {text!r}") from None


@dataclass(frozen=True)
class Option:
    """One option: how each source names it, how its text is parsed, its default,
    and its line and group in --help."""

    #: The dest name: `max_body_size` (flag --max-body-size, env RRPROXY_MAX_BODY_SIZE,
    #: file key max-body-size or max_body_size).
    name: str
    flags: tuple[str, ...]
    parse: Callable[[str], Any]
    default: Any
    help: str
    group: str
    metavar: str | None = None
    choices: tuple[str, ...] | None = None
    #: A switch (--debug): given means true.
    switch: bool = False
    #: May be given several times (--bind); a list in files, comma-separated in env.
    multiple: bool = False
    #: Shown as **** by --print-config.
    secret: bool = False

    @property
    def env(self) -> str:
        """Its environment variable: RRPROXY_ and the name in capitals."""
        return "RRPROXY_" + self.name.upper()

    def resolved_default(self) -> Any:
        """The default, computed now when it is a function (--workers: the CPUs)."""
        return self.default() if callable(self.default) else self.default


_SERVER = "server: where to listen and how connections reach workers"
_APP = "app: what to run and on which event loop"
_DEV = "development"
_LIMITS = "limits: what one client may cost"
_LIFE = "lifecycle: reload, recycling, health"
_TLS = "TLS (terminated in the workers)"
_WS = "WebSockets (ASGI)"
_PROXY = "behind proxies"
_STATE = "shared state"
_OBS = "admin interface and logs"

OPTIONS: tuple[Option, ...] = (
    # --- server
    Option("bind", ("-b", "--bind"), _str, (), "listen on ADDR: HOST:PORT, unix:PATH or "
           "fd://N; repeat for several (default: --host:--port)", _SERVER, "ADDR", multiple=True),
    Option("host", ("--host",), _str, "127.0.0.1", "address to bind (with --port)", _SERVER),
    Option("port", ("--port",), _int, 8000, "port to bind (0: a free one)", _SERVER),
    Option("uds", ("--uds",), _str, None, "listen on a unix socket at PATH", _SERVER, "PATH"),
    Option("uds_mode", ("--uds-mode",), _mode, 0o660, "file mode of --uds (octal)", _SERVER,
           "MODE"),
    Option("fd", ("--fd",), _int, (), "listen on an inherited socket fd (repeatable; systemd's "
           "LISTEN_FDS is picked up by itself)", _SERVER, "N", multiple=True),
    Option("workers", ("-w", "--workers"), _int, default_workers, "worker processes (also "
           "$WEB_CONCURRENCY; default: the CPUs this process may use)", _SERVER, "N"),
    Option("policy", ("--policy",), _str, "rr", "rr, least-conn, ip-hash (the front picks), "
           "none, reuseport (the kernel picks), or module:Class for your own", _SERVER,
           "POLICY"),
    Option("backlog", ("--backlog",), _int, 2048, "listen() backlog", _SERVER, "N"),
    # --- app
    Option("app", ("app",), _str, None, "the app as module:attribute, e.g. "
           "workers.hello:handler (imported in each worker, from --app-dir)", _APP, "APP"),
    Option("app_dir", ("--app-dir",), _str, ".", "directory put first on sys.path to import "
           "APP", _APP, "DIR"),
    Option("factory", ("--factory",), _bool, False, "APP is a factory: call it (it may be "
           "async) to get the app", _APP, switch=True),
    Option("interface", ("--interface",), _str, "auto", "auto, native, asgi or wsgi", _APP,
           choices=("auto", "native", "asgi", "wsgi")),
    Option("loop", ("--loop",), _str, "auto", "the workers' event loop: auto runs native "
           "handlers on trio, ASGI and WSGI apps on asyncio (uvloop when installed)", _APP,
           choices=LOOPS),
    Option("threads", ("--threads",), _int, 1, "WSGI apps: threads per worker", _APP, "N"),
    Option("lifespan", ("--lifespan",), _str, "auto", "ASGI lifespan: auto, on or off", _APP,
           choices=("auto", "on", "off")),
    Option("root_path", ("--root-path",), _str, "", "ASGI root_path / WSGI SCRIPT_NAME, for "
           "apps mounted below a prefix", _APP, "PATH"),
    Option("env_file", ("--env-file",), _str, None, "KEY=VALUE lines put in the workers' "
           "environment", _APP, "PATH"),
    Option("fork_server", ("--fork-server",), _bool, False, "fork workers from a zygote "
           "that has imported the worker's modules: shared memory, fast starts", _APP,
           switch=True),
    Option("preload", ("--preload",), _bool, False, "import APP in the fork server too, "
           "so its pages are shared (implies --fork-server; as gunicorn --preload)", _APP,
           switch=True),
    # --- development
    Option("reload", ("--reload",), _bool, False, "roll workers over when a file under "
           "--reload-dir changes (needs rrproxy[reload])", _DEV, switch=True),
    Option("reload_dirs", ("--reload-dir",), _str, (), "directory to watch (repeatable; "
           "default: --app-dir)", _DEV, "DIR", multiple=True),
    Option("reload_includes", ("--reload-include",), _str, ("*.py",), "glob of files that "
           "trigger a reload (repeatable)", _DEV, "GLOB", multiple=True),
    Option("reload_excludes", ("--reload-exclude",), _str, (".*", "*.pyc", "__pycache__"),
           "glob of files that do not (repeatable)", _DEV, "GLOB", multiple=True),
    # --- limits
    Option("max_header_size", ("--max-header-size",), parse_size, 16 * 1024, "request line "
           "+ headers larger than this: 431", _LIMITS, "SIZE"),
    Option("max_headers", ("--max-headers",), _int, 100, "header lines above this: 431",
           _LIMITS, "N"),
    Option("max_body_size", ("--max-body-size",), parse_size, 1024 * 1024, "request body "
           "larger than this: 413", _LIMITS, "SIZE"),
    Option("header_timeout", ("--header-timeout",), _float, 10.0, "the whole head (or a piece "
           "of a body) not received within this: 408", _LIMITS, "SECONDS"),
    Option("keep_alive", ("--keep-alive",), _float, 5.0, "idle keep-alive connections close "
           "after this", _LIMITS, "SECONDS"),
    Option("send_timeout", ("--send-timeout",), _float, 30.0, "a client that takes no "
           "response bytes this long is disconnected", _LIMITS, "SECONDS"),
    Option("limit_concurrency", ("--limit-concurrency",), _optional_int, None, "per worker: "
           "a connection above N open ones gets 503", _LIMITS, "N"),
    Option("max_connections", ("--max-connections",), _int, 10000, "open connections in "
           "all; above it new ones wait in the kernel backlog", _LIMITS, "N"),
    # --- lifecycle
    Option("graceful_timeout", ("--graceful-timeout",), _float, 30.0, "on shutdown, time "
           "in-flight requests get before workers are killed", _LIFE, "SECONDS"),
    Option("timeout", ("--timeout",), _float, 30.0, "a worker silent this long is killed "
           "and replaced (0: never)", _LIFE, "SECONDS"),
    Option("ready_timeout", ("--ready-timeout",), _float, 60.0, "a new worker not ready "
           "within this fails", _LIFE, "SECONDS"),
    Option("reload_batch", ("--reload-batch",), _int, 1, "workers replaced at a time by a "
           "rolling reload", _LIFE, "N"),
    Option("ready_strategy", ("--ready-strategy",), _str, "all", "start serving once all "
           "workers are ready, or once the first one is", _LIFE, choices=("all", "first")),
    Option("max_memory", ("--max-memory",), parse_size, 0, "recycle a worker above this "
           "resident memory (0: never)", _LIFE, "SIZE"),
    Option("max_requests", ("--max-requests",), _int, 0, "recycle a worker after N "
           "requests (0: never)", _LIFE, "N"),
    Option("max_requests_jitter", ("--max-requests-jitter",), _int, 0, "add a random 0..J "
           "to --max-requests per worker", _LIFE, "J"),
    Option("handoff_timeout", ("--handoff-timeout",), _float, 5.0, "kill a stopped "
           "(SIGSTOP) worker holding handed connections after this (0: never)", _LIFE,
           "SECONDS"),
    # --- TLS
    Option("ssl_certfile", ("--ssl-certfile",), _str, None, "certificate chain (PEM)", _TLS,
           "PATH"),
    Option("ssl_keyfile", ("--ssl-keyfile",), _str, None, "private key (PEM)", _TLS, "PATH"),
    Option("ssl_keyfile_password", ("--ssl-keyfile-password",), _str, None, "password of an "
           "encrypted key", _TLS, "PASSWORD", secret=True),
    Option("ssl_ca_certs", ("--ssl-ca-certs",), _str, None, "CA certificates to verify "
           "clients with", _TLS, "PATH"),
    Option("ssl_cert_reqs", ("--ssl-cert-reqs",), _str, "none", "client certificates: none, "
           "optional or required", _TLS, choices=("none", "optional", "required")),
    Option("ssl_ciphers", ("--ssl-ciphers",), _str, None, "OpenSSL cipher list (TLS 1.2)",
           _TLS, "CIPHERS"),
    Option("ssl_handshake_timeout", ("--ssl-handshake-timeout",), _float, 10.0, "a client "
           "that does not finish the TLS handshake within this is cut off", _TLS, "SECONDS"),
    # --- websockets
    Option("ws_max_size", ("--ws-max-size",), parse_size, 16 * 1024 * 1024, "largest "
           "WebSocket message (above: close 1009)", _WS, "SIZE"),
    Option("ws_ping_interval", ("--ws-ping-interval",), _float, 20.0, "ping idle WebSocket "
           "clients this often (0: never)", _WS, "SECONDS"),
    Option("ws_ping_timeout", ("--ws-ping-timeout",), _float, 20.0, "close a WebSocket "
           "whose ping is not answered within this", _WS, "SECONDS"),
    # --- proxies
    Option("proxy_protocol", ("--proxy-protocol",), _bool, False, "expect HAProxy's PROXY "
           "protocol (v1/v2) on every connection", _PROXY, switch=True),
    Option("forwarded_allow_ips", ("--forwarded-allow-ips",), _str, "127.0.0.1,::1",
           "addresses or networks (or *) whose X-Forwarded-For/-Proto are believed", _PROXY,
           "IPS"),
    # --- state
    Option("state", ("--state",), _str, "memory", "rrproxy.state backend: memory (the "
           "front) or redis://[:password@]host:port/db", _STATE, "URL"),
    Option("state_max_memory", ("--state-max-memory",), parse_size, 256 * 1024 * 1024,
           "bytes the memory state store may hold", _STATE, "SIZE"),
    # --- admin and logs
    Option("admin", ("--admin",), _str, None, "admin interface: unix:/path, HOST:PORT "
           "(needs --admin-token) or off (default: a private unix socket)", _OBS, "ADDR"),
    Option("admin_token", ("--admin-token",), _str, None, "require 'Authorization: Bearer "
           "TOKEN' on the admin interface", _OBS, "TOKEN", secret=True),
    Option("log_level", ("--log-level",), _str, "info", "log verbosity", _OBS,
           choices=LEVELS),
    Option("log_format", ("--log-format",), _str, "text", "text lines or one JSON object "
           "per line (start-up lines included)", _OBS, choices=FORMATS),
    Option("log_config", ("--log-config",), _str, None, "logging configuration: a "
           "dictConfig .json/.yaml or a fileConfig .ini", _OBS, "PATH"),
    Option("access_log", ("--access-log",), _bool, False, "log every request", _OBS,
           switch=True),
    Option("access_log_format", ("--access-log-format",), _str,
           '{client} "{method} {path}" {status} {bytes} {duration_ms}ms', "access log "
           "line; fields: client method path status bytes duration_ms worker", _OBS,
           "FORMAT"),
    Option("log_file", ("--log-file",), _str, None, "append logs here (SIGUSR1 reopens it)",
           _OBS, "PATH"),
    Option("debug", ("--debug",), _bool, False, "tracebacks in 500 responses (never in "
           "production)", _OBS, switch=True),
    # --- configuration itself (command line only)
    Option("config", ("--config",), _str, None, "read options from this TOML file (default: "
           "[tool.rrproxy] in --app-dir's pyproject.toml, if any)", "configuration",
           "PATH"),
    Option("print_config", ("--print-config",), _bool, False, "show every option's value "
           "and where it came from, then exit", "configuration", switch=True),
)  # fmt: skip

BY_NAME = {option.name: option for option in OPTIONS}
#: Options only the command line can set.
CLI_ONLY = ("config", "print_config")


#: What each parser expects, for the error about a value of the wrong TOML type.
_EXPECTED: dict[Callable[[str], Any], str] = {
    _int: "a whole number",
    _optional_int: 'a whole number or "off"',
    _float: "a number of seconds",
    parse_size: 'a size such as "16K" or a number of bytes',
    _bool: "true or false",
    _str: "text",
    # A TOML number would be read as decimal: 660 is not 0o660.
    _mode: 'an octal file mode in quotes, such as "660"',
}
#: The parsers that take a TOML (or Python) number as well as text.
_NUMERIC = (_int, _optional_int, _float, parse_size)


def coerce(option: Option, value: Any) -> Any:
    """A value from a TOML file or rrproxy.Config() (native types) or text (env,
    command line). ConfigError for a value of the wrong type or out of choices; the
    caller puts the option's name (or flag, or variable) in front."""
    if option.multiple:
        if isinstance(value, str):
            items: list[Any] = [v.strip() for v in value.split(",") if v.strip()]
        elif isinstance(value, list | tuple):
            items = list(value)
        else:
            raise ConfigError(f"expected a list, got {value!r}")
        return tuple(_coerce_one(option, item) for item in items)
    return _coerce_one(option, value)


def _coerce_one(option: Option, value: Any) -> Any:
    if isinstance(value, str):
        parsed = option.parse(value)
        if option.choices is not None and parsed not in option.choices:
            raise ConfigError(f"must be one of {', '.join(option.choices)}, got {parsed!r}")
        return parsed
    # bool is an int: checked first, so `workers = true` is not 1.
    if isinstance(value, bool):
        if option.parse is _bool:
            return value
    elif isinstance(value, int | float) and option.parse in _NUMERIC:
        # Through the text parser, for one set of checks: 2.5 is not a whole number,
        # inf and nan are not seconds, -1 is not a size.
        return option.parse(str(value))
    raise ConfigError(f"expected {_EXPECTED[option.parse]}, got {value!r}")


def environ_value(option: Option, environ: os._Environ[str] | dict[str, str]) -> str | None:
    """The option's text in `environ`, or None if unset; --workers falls back to
    $WEB_CONCURRENCY."""
    if option.name == "workers" and option.env not in environ:
        return environ.get("WEB_CONCURRENCY")  # as gunicorn and uvicorn read it
    return environ.get(option.env)
