"""Resolved options turned into a validated Config (cli.build_config, config.py):
sizes, ranges, binds, --env-file and the workers' part of it. Where the values come
from is test_sources.py."""

from __future__ import annotations

import dataclasses
import json
import os
from pathlib import Path
from typing import Any

import pytest

from .cli import binds_of, build_config, check_environment, read_env_file
from .config import Config, ConfigError, WorkerConfig, parse_size
from .sources import Settings, resolve


@pytest.fixture(autouse=True)
def _clean(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> None:
    # No pyproject.toml of the repository, no socket activation of the test runner.
    monkeypatch.chdir(tmp_path)
    monkeypatch.delenv("LISTEN_FDS", raising=False)
    monkeypatch.delenv("LISTEN_PID", raising=False)
    monkeypatch.delenv("RRPROXY_REDIS_PASSWORD", raising=False)


def settings(argv: list[str], env: dict[str, str] | None = None) -> Settings:
    return resolve(argv, {} if env is None else env)[0]


def config(argv: list[str], env: dict[str, str] | None = None) -> Config:
    return build_config(settings(argv, env))


def write(path: Path, text: str) -> Path:
    path.write_text(text)
    return path


@pytest.mark.parametrize(
    ("text", "size"),
    [
        ("0", 0),
        ("512", 512),
        ("16K", 16 * 1024),
        (" 16kb ", 16 * 1024),
        ("1.5k", 1536),
        ("1M", 1024**2),
        ("512MiB", 512 * 1024**2),
        ("2g", 2 * 1024**3),
        ("3B", 3),
    ],
)
def test_parse_size(text: str, size: int) -> None:
    assert parse_size(text) == size


@pytest.mark.parametrize("text", ["", "K", "12Q", "-1K", "1T", "abc", "1kk", "0x10"])
def test_parse_size_refuses(text: str) -> None:
    with pytest.raises(ConfigError, match=r"invalid size .* \(examples: 16K, 1M, 2G\)"):
        parse_size(text)


@pytest.mark.parametrize("text", ["nan", "inf", "-inf", "1e400", "Infinity", "1e308k"])
def test_parse_size_refuses_non_finite_numbers(text: str) -> None:
    with pytest.raises(ConfigError, match="invalid size"):
        parse_size(text)


# --- build_config ----------------------------------------------------------------------------


def test_a_full_command_line_becomes_a_config(tmp_path: Path) -> None:
    c = config(
        [
            "--workers", "3", "--max-connections", "100", "--policy", "least-conn",
            "--limit-concurrency", "50", "--root-path", "/api/", "--log-file", "rr.log",
            "--forwarded-allow-ips", " 10.0.0.1, 10.0.0.0/8 ,", "--preload", "--port", "9000",
            "app:handler",
        ]
    )  # fmt: skip
    assert c.workers == 3
    assert c.max_connections == 100
    assert c.policy == "least-conn" and c.worker.policy == "least-conn"
    assert c.worker.limit_concurrency == 50
    assert c.worker.root_path == "/api"
    assert c.worker.log_file == str(tmp_path / "rr.log")
    assert c.worker.forwarded_allow_ips == ("10.0.0.1", "10.0.0.0/8")
    assert c.fork_server and c.preload
    assert c.binds == ("127.0.0.1:9000",)
    assert c.reload_dirs == (".",)


@pytest.mark.parametrize(
    ("max_connections", "workers", "share"),
    [(10000, 3, 3334), (10000, 4, 2500), (10, 4, 3), (8, 8, 1), (7, 1, 7)],
)
def test_each_worker_gets_its_share_of_max_connections(
    max_connections: int, workers: int, share: int
) -> None:
    c = config(["--max-connections", str(max_connections), "-w", str(workers), "a:b"])
    assert c.worker.worker_connections == share
    assert c.max_connections == max_connections
    # Shares cover the total, and no worker gets a whole extra one.
    assert share * workers >= max_connections > (share - 1) * workers


def test_binds() -> None:
    assert config(["--host", "::1", "--port", "80", "a:b"]).binds == ("[::1]:80",)
    c = config(["--bind", "0.0.0.0:1", "--uds", "/tmp/x.sock", "--fd", "7", "--port", "5", "a:b"])
    assert c.binds == ("0.0.0.0:1", "unix:/tmp/x.sock", "fd://7")  # --port unused
    c = config(["-b", "0.0.0.0:1", "-b", "0.0.0.0:1", "a:b"])
    assert c.binds == ("0.0.0.0:1",)  # duplicates dropped


def test_systemd_sockets_are_listened_on(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("LISTEN_FDS", "2")
    monkeypatch.setenv("LISTEN_PID", str(os.getpid()))
    assert config(["a:b"]).binds == ("fd://3", "fd://4")
    monkeypatch.setenv("LISTEN_PID", "1")  # meant for another process
    assert config(["a:b"]).binds == ("127.0.0.1:8000",)


@pytest.mark.parametrize(
    ("values", "message"),
    [
        ({"port": 70000}, "--port must be between 0 and 65535, got 70000"),
        ({"bind": ("nowhere",)}, "--bind must be HOST:PORT, unix:PATH or fd://N, got 'nowhere'"),
        ({"bind": ("unix:",)}, "--bind unix: needs a path"),
        ({"bind": ("fd://x",)}, "--bind fd://N needs a file descriptor number"),
        # Beyond a C int: socket.socket(fileno=) raised ValueError, a traceback at start.
        ({"fd": (3_000_000_000,)}, "--bind fd://N needs a file descriptor number"),
        # int() refuses over 4300 digits: a ValueError traceback.
        ({"bind": ("fd://" + "9" * 5000,)}, "--bind fd://N needs a file descriptor number"),
        ({"bind": ("h:" + "9" * 5000,)}, "--bind must be HOST:PORT, unix:PATH or fd://N"),
    ],
)
def test_bad_binds(values: dict[str, Any], message: str) -> None:
    base: dict[str, Any] = {"bind": (), "uds": None, "fd": (), "port": 8000, "host": "h"}
    with pytest.raises(ConfigError) as caught:
        binds_of(base | values)
    assert str(caught.value).startswith(message)


@pytest.mark.parametrize(
    ("argv", "message"),
    [
        ([], "APP is required (module:attribute, on the command line or in a file)"),
        (["app"], "APP must be of the form module:attribute, got 'app'"),
        (["a:b:c"], "APP must be of the form module:attribute, got 'a:b:c'"),
        (["--state", "memcached://x", "a:b"], "--state must be memory or redis://host:port/db"),
        (["--state", "redis://h/zero", "a:b"], "--state redis://h/zero: the database must be"),
        (["-w", "0", "a:b"], "--workers must be at least 1, got 0"),
        (["--policy", "random", "a:b"], "--policy must be one of rr, none, reuseport, least-conn"),
        (["--backlog", "0", "a:b"], "--backlog must be at least 1, got 0"),
        # listen() takes a C int: OverflowError, a traceback once the front binds.
        (["--backlog", "3000000000", "a:b"], "--backlog must be at most 2147483647"),
        (["--keep-alive", "0", "a:b"], "--keep-alive must be positive"),
        (["--header-timeout", "-1", "a:b"], "--header-timeout must be positive"),
        (["--send-timeout", "0", "a:b"], "--send-timeout must be positive"),
        (["--graceful-timeout", "-1", "a:b"], "--graceful-timeout must not be negative"),
        (["--timeout", "-1", "a:b"], "--timeout must not be negative (0 disables it)"),
        (["--max-header-size", "512", "a:b"], "--max-header-size must be at least 1K"),
        (["--threads", "0", "a:b"], "--threads must be between 1 and 1024"),
        (["--threads", "1025", "a:b"], "--threads must be between 1 and 1024"),
        (["--max-headers", "0", "a:b"], "--max-headers must be at least 1"),
        (["--limit-concurrency", "0", "a:b"], "--limit-concurrency must be at least 1"),
        (["--ready-timeout", "0", "a:b"], "--ready-timeout must be positive"),
        (["--reload-batch", "0", "a:b"], "--reload-batch must be at least 1"),
        (["--max-requests", "-1", "a:b"], "--max-requests and --max-requests-jitter must not"),
        (["--max-requests-jitter", "-5", "a:b"], "--max-requests and --max-requests-jitter"),
        (["--handoff-timeout", "-1", "a:b"], "--handoff-timeout must not be negative"),
        (["--state-max-memory", "512K", "a:b"], "--state-max-memory must be at least 1M"),
        (["-w", "4", "--max-connections", "3", "a:b"], "--max-connections must be at least"),
        (["--ssl-handshake-timeout", "0", "a:b"], "--ssl-handshake-timeout must be positive"),
        (["--ws-ping-timeout", "0", "a:b"], "--ws-ping-timeout must be positive"),
        (["--ws-ping-timeout", "-1", "a:b"], "--ws-ping-timeout must be positive"),
        (["--ws-ping-interval", "-1", "a:b"], "--ws-ping-interval must not be negative"),
        (["--ws-max-size", "0", "a:b"], "--ws-max-size must be at least 1"),
        (["--uds-mode", "1777", "a:b"], "--uds-mode must be between 0 and 777 (octal), got 1777"),
        (["--uds-mode", "-1", "a:b"], "--uds-mode must be between 0 and 777"),
        (["--access-log-format", "{nope}", "a:b"], "--access-log-format: KeyError: 'nope'"),
        (["--access-log-format", "{0}", "a:b"], "--access-log-format: IndexError"),
        (["--access-log-format", "{status:x}{path:d}", "a:b"], "--access-log-format: ValueError"),
    ],
)
def test_every_invalid_value_says_which_option(argv: list[str], message: str) -> None:
    with pytest.raises(ConfigError) as caught:
        config(argv)
    assert str(caught.value).startswith(message)


def test_access_log_format_errors_list_the_fields() -> None:
    with pytest.raises(ConfigError) as caught:
        config(["--access-log-format", "{when}", "a:b"])
    assert "fields: client, method, path, status, bytes, duration_ms, worker" in str(caught.value)


def test_valid_edges_are_accepted() -> None:
    c = config(
        [
            "-w", "1", "--max-connections", "1", "--graceful-timeout", "0", "--timeout", "0",
            "--max-header-size", "1K", "--threads", "1024", "--max-body-size", "0",
            "--handoff-timeout", "0", "--state-max-memory", "1M", "--policy", "pkg.mod:My",
            "--ws-ping-interval", "0", "--ws-max-size", "1", "--uds-mode", "0",
            "--access-log-format", "{worker} {status:d}", "a.b:c.d",
        ]
    )  # fmt: skip
    assert c.policy == "pkg.mod:My"
    assert c.worker.app == "a.b:c.d"
    assert c.worker.graceful_timeout == 0
    assert c.worker.ws_ping_interval == 0 and c.uds_mode == 0
    assert config(["--uds-mode", "777", "a:b"]).uds_mode == 0o777


@pytest.mark.parametrize(
    ("field", "flag"),
    [
        ("keep_alive", "keep-alive"),
        ("graceful_timeout", "graceful-timeout"),
        ("ssl_handshake_timeout", "ssl-handshake-timeout"),
        ("ws_ping_interval", "ws-ping-interval"),
        ("ws_ping_timeout", "ws-ping-timeout"),
    ],
)
@pytest.mark.parametrize("seconds", [float("nan"), float("inf")])
def test_a_config_made_in_python_refuses_non_finite_seconds(
    field: str, flag: str, seconds: float
) -> None:
    # nan passes every `< 0` and `<= 0` check: without the finite check it got through.
    changes: dict[str, Any] = {field: seconds}
    worker = WorkerConfig(app="a:b", **changes)
    with pytest.raises(ConfigError, match=rf"^--{flag} must be a finite number of seconds"):
        Config(worker=worker).validate()
    with pytest.raises(ConfigError, match=r"^--timeout must be a finite"):
        Config(worker=WorkerConfig(app="a:b"), timeout=seconds).validate()


def test_a_config_made_in_python_refuses_a_negative_max_memory() -> None:
    with pytest.raises(ConfigError, match=r"^--max-memory must not be negative"):
        Config(worker=WorkerConfig(app="a:b"), max_memory=-1).validate()


def test_env_file(tmp_path: Path) -> None:
    path = write(
        tmp_path / ".env",
        "# comment\n\nA=1\nexport B = two words \nC='quoted # not a comment'\n"
        'D="x"\nE=\nF_9=a=b\n',
    )
    assert read_env_file(str(path)) == (
        ("A", "1"),
        ("B", "two words"),
        ("C", "quoted # not a comment"),
        ("D", "x"),
        ("E", ""),
        ("F_9", "a=b"),
    )
    assert config(["--env-file", str(path), "a:b"]).env[0] == ("A", "1")
    for bad in ("NOEQUALS\n", "9A=1\n", "A-B=1\n", "=1\n"):
        write(path, f"OK=1\n{bad}")
        with pytest.raises(ConfigError, match=rf"^{path}, line 2: expected KEY=VALUE$"):
            read_env_file(str(path))
    with pytest.raises(ConfigError, match="cannot read --env-file"):
        read_env_file(str(tmp_path / "missing"))


def test_check_environment_needs_the_certificate_with_the_key() -> None:
    with pytest.raises(ConfigError, match="--ssl-keyfile needs --ssl-certfile"):
        check_environment(config(["--ssl-keyfile", "k.pem", "a:b"]))


# --- WorkerConfig through the Configure message ------------------------------------------------


def test_worker_config_round_trips_through_json() -> None:
    original = config(
        [
            "--keep-alive", "2.5", "--limit-concurrency", "9", "--forwarded-allow-ips", "*",
            "--ssl-cert-reqs", "optional", "--interface", "asgi", "--debug", "app:x",
        ]
    ).worker  # fmt: skip
    data = json.loads(json.dumps(original.to_dict()))
    back = WorkerConfig.from_dict(data)
    # Tuples travel as lists (and the worker takes lists); everything else is equal.
    assert back.forwarded_allow_ips == ["*"]
    normalised = dataclasses.replace(
        back,
        forwarded_allow_ips=tuple(back.forwarded_allow_ips),
        reuseport_binds=tuple(back.reuseport_binds),
    )
    assert normalised == original
    assert back.to_dict() == data


def test_worker_config_from_dict_ignores_unknown_keys_and_defaults_missing_ones() -> None:
    back = WorkerConfig.from_dict({"app": "a:b", "from_a_newer_front": 1, "threads": 4})
    assert back == WorkerConfig(app="a:b", threads=4)
    with pytest.raises(TypeError):
        WorkerConfig.from_dict({"threads": 4})  # app is required
