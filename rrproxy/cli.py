"""`rrproxy [options] APP`: the settings from every source (sources.py), turned into a
Config, and the one-line errors (exit status 2)."""

from __future__ import annotations

import itertools
import os
import sys
from pathlib import Path
from typing import Any, NoReturn

from .appload import AppSpecError, parse_app_spec
from .config import Config, ConfigError, WorkerConfig
from .fdlimit import raise_fd_limit
from .listeners import parse_bind, systemd_fds
from .logs import format_line, setup_logging
from .sources import Settings, print_config, resolve

CONTROL_COMMANDS = ("status", "reload", "scale", "stop", "dashboard")


def fail(message: str, as_json: bool | None = None) -> NoReturn:
    """Print `message` as rrproxy's one-line error (JSON under --log-format json) and
    exit 2. Before the options are parsed, `as_json` is guessed from argv and the env."""
    if as_json is None:  # before the options are known: what the command line says
        argv = sys.argv[1:]
        pairs = itertools.pairwise(argv)
        as_json = (
            "--log-format=json" in argv
            or ("--log-format", "json") in pairs
            or os.environ.get("RRPROXY_LOG_FORMAT") == "json"
        )
    print(format_line(f"rrproxy: error: {message}", "error", as_json), file=sys.stderr,
          flush=True)  # fmt: skip
    sys.exit(2)


def read_env_file(path: str) -> tuple[tuple[str, str], ...]:
    """KEY=VALUE lines (# comments, blank lines, optional quotes, `export `)."""
    try:
        text = Path(path).read_text(encoding="utf-8")
    except OSError as exc:
        raise ConfigError(f"cannot read --env-file {path}: {exc.strerror}") from None
    pairs = []
    for number, line in enumerate(text.splitlines(), 1):
        line = line.strip()
        if not line or line.startswith("#"):
            continue
        line = line.removeprefix("export ").strip()
        key, sep, value = line.partition("=")
        key = key.strip()
        if not sep or not key.replace("_", "a").isalnum() or key[0].isdigit():
            raise ConfigError(f"{path}, line {number}: expected KEY=VALUE")
        value = value.strip()
        if len(value) >= 2 and value[0] == value[-1] and value[0] in "'\"":
            value = value[1:-1]
        pairs.append((key, value))
    return tuple(pairs)


def binds_of(values: dict[str, Any]) -> tuple[str, ...]:
    """The sockets to listen on as bind strings: --bind, --uds, --fd and systemd's,
    else --host and --port; each checked (ConfigError), duplicates dropped."""
    binds = list(values["bind"])
    if values["uds"]:
        binds.append(f"unix:{values['uds']}")
    binds += [f"fd://{fd}" for fd in values["fd"]]
    binds += [f"fd://{fd}" for fd in systemd_fds()]
    if not binds:
        if not 0 <= values["port"] <= 65535:
            raise ConfigError(f"--port must be between 0 and 65535, got {values['port']}")
        host = values["host"]
        binds.append(f"[{host}]:{values['port']}" if ":" in host else f"{host}:{values['port']}")
    for text in binds:
        parse_bind(text)  # ConfigError for a malformed one
    return tuple(dict.fromkeys(binds))


def build_config(settings: Settings) -> Config:
    """The Config the resolved settings describe, validated; ConfigError naming the
    first problem. The app is not imported."""
    values = settings.values
    if not values["app"]:
        raise ConfigError("APP is required (module:attribute, on the command line or in a file)")
    try:
        parse_app_spec(values["app"])
    except AppSpecError as exc:
        raise ConfigError(str(exc)) from None
    if values["state"] != "memory":
        try:
            import hiredis  # noqa: F401
        except ImportError:
            raise ConfigError(
                "--state redis:// needs hiredis: pip install 'rrproxy[redis]'"
            ) from None
        from .state.redis import parse_url

        try:
            parse_url(values["state"])
        except ValueError as exc:
            raise ConfigError(str(exc)) from None
    workers = max(values["workers"], 1)
    worker = WorkerConfig(
        app=values["app"],
        app_dir=values["app_dir"],
        policy=values["policy"],
        log_level=values["log_level"],
        graceful_timeout=values["graceful_timeout"],
        keep_alive=values["keep_alive"],
        header_timeout=values["header_timeout"],
        max_header_size=values["max_header_size"],
        max_headers=values["max_headers"],
        max_body_size=values["max_body_size"],
        send_timeout=values["send_timeout"],
        limit_concurrency=values["limit_concurrency"],
        # Under `none` nobody sees the total: each worker keeps to its share.
        worker_connections=-(-values["max_connections"] // workers),
        max_requests=values["max_requests"],
        max_requests_jitter=values["max_requests_jitter"],
        debug=values["debug"],
        access_log=values["access_log"],
        access_log_format=values["access_log_format"],
        state=values["state"],
        proxy_protocol=values["proxy_protocol"],
        forwarded_allow_ips=tuple(
            ip.strip() for ip in values["forwarded_allow_ips"].split(",") if ip.strip()
        ),
        interface=values["interface"],
        loop=values["loop"],
        threads=values["threads"],
        heartbeat_timeout=values["timeout"],
        factory=values["factory"],
        lifespan=values["lifespan"],
        root_path=values["root_path"].rstrip("/"),
        ws_max_size=values["ws_max_size"],
        ws_ping_interval=values["ws_ping_interval"],
        ws_ping_timeout=values["ws_ping_timeout"],
        log_format=values["log_format"],
        log_file=os.path.abspath(values["log_file"]) if values["log_file"] else None,
        log_config=os.path.abspath(values["log_config"]) if values["log_config"] else None,
        ssl_certfile=_abs(values["ssl_certfile"]),
        ssl_keyfile=_abs(values["ssl_keyfile"]),
        ssl_keyfile_password=values["ssl_keyfile_password"],
        ssl_ca_certs=_abs(values["ssl_ca_certs"]),
        ssl_cert_reqs=values["ssl_cert_reqs"],
        ssl_ciphers=values["ssl_ciphers"],
        ssl_handshake_timeout=values["ssl_handshake_timeout"],
    )
    config = Config(
        worker=worker,
        binds=binds_of(values),
        uds_mode=values["uds_mode"],
        env=read_env_file(values["env_file"]) if values["env_file"] else (),
        reload=values["reload"],
        reload_dirs=tuple(values["reload_dirs"]) or (values["app_dir"],),
        reload_includes=tuple(values["reload_includes"]),
        reload_excludes=tuple(values["reload_excludes"]),
        workers=values["workers"],
        backlog=values["backlog"],
        max_connections=values["max_connections"],
        timeout=values["timeout"],
        ready_timeout=values["ready_timeout"],
        reload_batch=values["reload_batch"],
        fork_server=values["fork_server"] or values["preload"],
        preload=values["preload"],
        ready_strategy=values["ready_strategy"],
        max_memory=values["max_memory"],
        handoff_timeout=values["handoff_timeout"],
        state_max_memory=values["state_max_memory"],
        admin=values["admin"],
        admin_token=values["admin_token"],
    )
    config.validate()
    return config


def _abs(path: str | None) -> str | None:
    return os.path.abspath(path) if path else None


def check_environment(config: Config) -> None:
    """What can be checked before starting: optional packages, the admin address,
    the TLS files. ConfigError for the first problem."""
    worker = config.worker
    if worker.loop == "uvloop":
        try:
            import uvloop  # noqa: F401
        except ImportError:
            raise ConfigError("--loop uvloop needs uvloop: pip install 'rrproxy[uvloop]'") from None
    if config.reload:
        try:
            import watchfiles  # noqa: F401
        except ImportError:
            raise ConfigError("--reload needs watchfiles: pip install 'rrproxy[reload]'") from None
    if worker.ssl_keyfile and not worker.ssl_certfile:
        raise ConfigError("--ssl-keyfile needs --ssl-certfile")
    if worker.ssl_certfile:
        from .tls import server_context

        server_context(worker)  # reads the files: a bad path or key fails here, once
    if config.admin not in (None, "off"):
        from .adminaddress import parse_admin

        parse_admin(config.admin, config.admin_token)


def main(argv: list[str] | None = None) -> NoReturn:
    """The `rrproxy` command: a control command (status, reload, scale, stop,
    dashboard) or, by default, serve APP until stopped; exits with the status."""
    argv = sys.argv[1:] if argv is None else argv
    if argv and argv[0] in CONTROL_COMMANDS:
        from .control import main as control_main

        sys.exit(control_main(argv))
    as_json: bool | None = None
    try:
        settings, _ = resolve(argv)
        as_json = settings["log_format"] == "json"
        if settings["print_config"]:
            print_config(settings)
            sys.exit(0)
        config = build_config(settings)
        check_environment(config)
    except ConfigError as exc:
        fail(str(exc), as_json)
    worker = config.worker
    try:
        setup_logging(
            worker.log_level,
            {"pid": os.getpid()},
            worker.log_format,
            worker.log_file,
            worker.access_log,
            worker.log_config,
        )
    except (OSError, ValueError) as exc:
        fail(f"cannot set up logging: {exc}", as_json)
    raise_fd_limit()
    from .front.main import run  # trio is imported only to serve
    from .listeners import BindError

    try:
        code = run(config)
    except BindError as exc:
        fail(str(exc), as_json)
    except KeyboardInterrupt:
        code = 1
    sys.exit(code)
