"""Where each option's value comes from (sources.py, options.py): the command line,
the environment and TOML files in tmp_path, the errors that name them, and
--print-config."""

from __future__ import annotations

import io
from pathlib import Path

import pytest

from .config import ConfigError, default_workers
from .options import BY_NAME, OPTIONS, coerce
from .sources import print_config

# The same clean directory and environment, and helpers, as the config tests.
from .test_config import _clean, settings, write  # noqa: F401  (_clean: autouse fixture)

# --- where a value comes from -------------------------------------------------------------


def test_defaults_come_from_the_option_table() -> None:
    s = settings(["app:handler"])
    assert s["app"] == "app:handler"
    assert s.origins["app"] == "command line"
    assert s["keep_alive"] == 5.0 and s.origins["keep_alive"] == "default"
    assert s["max_body_size"] == 1024 * 1024
    assert s["workers"] == default_workers()
    assert s["bind"] == ()
    assert set(s.values) == {option.name for option in OPTIONS}


def test_command_line_beats_environment_beats_file_beats_default(tmp_path: Path) -> None:
    path = write(
        tmp_path / "rrproxy.toml",
        'app = "file:app"\nkeep-alive = 1\nbacklog = 11\nmax_headers = 21\n',
    )
    env = {
        "RRPROXY_CONFIG": str(path),
        "RRPROXY_KEEP_ALIVE": "2",
        "RRPROXY_BACKLOG": "12",
    }
    s = settings(["--keep-alive", "3", "cli:app"], env)
    assert (s["app"], s.origins["app"]) == ("cli:app", "command line")
    assert (s["keep_alive"], s.origins["keep_alive"]) == (3.0, "command line")
    assert (s["backlog"], s.origins["backlog"]) == (12, "environment ($RRPROXY_BACKLOG)")
    assert (s["max_headers"], s.origins["max_headers"]) == (21, f"{path}, line 4")
    assert (s["threads"], s.origins["threads"]) == (1, "default")
    # Without the command line, the environment wins; without it, the file.
    s = settings([], env)
    assert s["app"] == "file:app" and s.origins["app"] == f"{path}, line 1"
    assert s["keep_alive"] == 2.0
    del env["RRPROXY_KEEP_ALIVE"]
    assert settings([], env)["keep_alive"] == 1.0


def test_config_on_the_command_line_beats_rrproxy_config(tmp_path: Path) -> None:
    one = write(tmp_path / "one.toml", "threads = 4\n")
    two = write(tmp_path / "two.toml", "threads = 8\n")
    s = settings(["--config", str(two), "a:b"], {"RRPROXY_CONFIG": str(one)})
    assert s["threads"] == 8


def test_pyproject_in_the_app_dir_is_read(tmp_path: Path) -> None:
    app_dir = tmp_path / "srv"
    app_dir.mkdir()
    write(
        app_dir / "pyproject.toml",
        '[project]\nname = "x"\n\n[tool.rrproxy]\napp = "myapp:app"\nworkers = 3\n'
        'bind = ["0.0.0.0:8000", "unix:/run/x.sock"]\nmax-body-size = "8m"\naccess-log = true\n',
    )
    s = settings(["--app-dir", str(app_dir)])
    assert s["app"] == "myapp:app"
    assert s["workers"] == 3
    assert s.origins["workers"] == f"{app_dir / 'pyproject.toml'}, line 6"
    assert s["bind"] == ("0.0.0.0:8000", "unix:/run/x.sock")
    assert s["max_body_size"] == 8 * 1024 * 1024
    assert s["access_log"] is True
    # The same through $RRPROXY_APP_DIR.
    assert settings([], {"RRPROXY_APP_DIR": str(app_dir)})["workers"] == 3


def test_a_pyproject_without_the_table_or_no_file_is_fine(tmp_path: Path) -> None:
    write(tmp_path / "pyproject.toml", '[project]\nname = "x"\n')
    assert settings(["a:b"]).origins["workers"] == "default"
    (tmp_path / "pyproject.toml").unlink()
    assert settings(["a:b"]).origins["workers"] == "default"


def test_web_concurrency_sets_workers_unless_rrproxy_workers_does() -> None:
    s = settings(["a:b"], {"WEB_CONCURRENCY": "5"})
    assert s["workers"] == 5
    assert s.origins["workers"] == "environment ($WEB_CONCURRENCY)"
    s = settings(["a:b"], {"WEB_CONCURRENCY": "5", "RRPROXY_WORKERS": "6"})
    assert s["workers"] == 6
    assert s.origins["workers"] == "environment ($RRPROXY_WORKERS)"
    assert settings(["-w", "7", "a:b"], {"RRPROXY_WORKERS": "6"})["workers"] == 7


def test_lists_from_each_source(tmp_path: Path) -> None:
    s = settings(["-b", "127.0.0.1:1", "--bind", "unix:/tmp/a.sock", "a:b"])
    assert s["bind"] == ("127.0.0.1:1", "unix:/tmp/a.sock")
    s = settings(["a:b"], {"RRPROXY_BIND": "127.0.0.1:8000, unix:/run/app.sock,"})
    assert s["bind"] == ("127.0.0.1:8000", "unix:/run/app.sock")
    assert settings(["a:b"], {"RRPROXY_FD": "3,4"})["fd"] == (3, 4)
    path = write(tmp_path / "c.toml", 'fd = [5, 6]\nreload-includes = ["*.py", "*.html"]\n')
    s = settings(["--config", str(path), "a:b"])
    assert s["fd"] == (5, 6)
    assert s["reload_includes"] == ("*.py", "*.html")


def test_switches_and_booleans() -> None:
    assert settings(["--debug", "a:b"])["debug"] is True
    for text, value in [("1", True), ("yes", True), ("On", True), ("0", False), ("off", False)]:
        assert settings(["a:b"], {"RRPROXY_DEBUG": text})["debug"] is value
    with pytest.raises(ConfigError, match=r"^\$RRPROXY_DEBUG: expected true or false, got 'maybe'"):
        settings(["a:b"], {"RRPROXY_DEBUG": "maybe"})


def test_sizes_and_optional_numbers() -> None:
    s = settings(["--max-body-size", "2m", "--max-header-size", "32K", "a:b"])
    assert s["max_body_size"] == 2 * 1024 * 1024
    assert s["max_header_size"] == 32 * 1024
    assert settings(["a:b"], {"RRPROXY_LIMIT_CONCURRENCY": "100"})["limit_concurrency"] == 100
    assert settings(["a:b"], {"RRPROXY_LIMIT_CONCURRENCY": "off"})["limit_concurrency"] is None
    assert settings(["--uds-mode", "600", "a:b"])["uds_mode"] == 0o600


# --- errors name their source ------------------------------------------------------------------


@pytest.mark.parametrize(
    ("env", "message"),
    [
        ({"RRPROXY_WORKERS": "four"}, "$RRPROXY_WORKERS: expected a whole number, got 'four'"),
        ({"WEB_CONCURRENCY": "x"}, "$WEB_CONCURRENCY: expected a whole number, got 'x'"),
        ({"RRPROXY_KEEP_ALIVE": "soon"}, "$RRPROXY_KEEP_ALIVE: expected a number of seconds"),
        ({"RRPROXY_LOOP": "gevent"}, "$RRPROXY_LOOP: must be one of auto, trio, asyncio, uvloop"),
        ({"RRPROXY_UDS_MODE": "rw"}, "$RRPROXY_UDS_MODE: expected an octal file mode"),
        ({"RRPROXY_MAX_BODY_SIZE": "big"}, "$RRPROXY_MAX_BODY_SIZE: invalid size 'big'"),
        ({"RRPROXY_FD": "3,x"}, "$RRPROXY_FD: expected a whole number, got 'x'"),
        ({"RRPROXY_KEEP_ALIVE": "inf"}, "$RRPROXY_KEEP_ALIVE: expected a number of seconds, got"),
        ({"RRPROXY_TIMEOUT": "nan"}, "$RRPROXY_TIMEOUT: expected a number of seconds, got 'nan'"),
        ({"RRPROXY_WS_PING_TIMEOUT": "1e400"}, "$RRPROXY_WS_PING_TIMEOUT: expected a number"),
        ({"RRPROXY_MAX_MEMORY": "inf"}, "$RRPROXY_MAX_MEMORY: invalid size 'inf'"),
    ],
)
def test_bad_environment_values_name_the_variable(env: dict[str, str], message: str) -> None:
    with pytest.raises(ConfigError) as caught:
        settings(["a:b"], env)
    assert str(caught.value).startswith(message)


@pytest.mark.parametrize(
    ("argv", "message"),
    [
        (["--max-body-size", "12Q"], "--max-body-size: invalid size '12Q'"),
        (["--workers", "two"], "--workers: expected a whole number, got 'two'"),
        (["--fd", "3", "--fd", "x"], "--fd: expected a whole number, got 'x'"),
        (["--limit-concurrency", "many"], "--limit-concurrency: expected a whole number"),
        (["--max-body-size", "inf"], "--max-body-size: invalid size 'inf'"),
        (["--ssl-handshake-timeout", "inf"], "--ssl-handshake-timeout: expected a number"),
        (["--ws-ping-interval", "nan"], "--ws-ping-interval: expected a number of seconds"),
    ],
)
def test_bad_command_line_values_name_the_flag(argv: list[str], message: str) -> None:
    with pytest.raises(ConfigError) as caught:
        settings([*argv, "a:b"])
    assert str(caught.value).startswith(message)


@pytest.mark.parametrize(
    "argv", [["--no-such-option"], ["--loop", "gevent"], ["--keep"], ["a:b", "c:d"]]
)
def test_argparse_errors_are_one_line_and_exit_2(
    argv: list[str], capsys: pytest.CaptureFixture[str]
) -> None:
    with pytest.raises(SystemExit) as caught:
        settings(argv)
    assert caught.value.code == 2
    err = capsys.readouterr().err
    assert err.startswith("rrproxy: error: ")
    assert err.count("\n") == 1  # no usage dump


@pytest.mark.parametrize(
    ("text", "message"),
    [
        ("wokers = 4\n", "{path}, line 1: unknown option 'wokers'"),
        ('app = "a:b"\nkeep-alive = "fast"\n', "{path}, line 2: keep-alive: expected a number"),
        ("workers = true\n", "{path}, line 1: workers: expected a whole number, got True"),
        ("workers = 2.5\n", "{path}, line 1: workers: expected a whole number, got '2.5'"),
        ('loop = "gevent"\n', "{path}, line 1: loop: must be one of auto, trio, asyncio"),
        ("bind = 8000\n", "{path}, line 1: bind: expected a list, got 8000"),
        ('config = "other.toml"\n', "{path}, line 1: unknown option 'config'"),
        ("print-config = true\n", "{path}, line 1: unknown option 'print-config'"),
        ("workers = \n", "{path}: not valid TOML"),
        # TOML's own types: the wrong one is named, and the numbers get the text's checks.
        ("limit-concurrency = true\n", '{path}, line 1: limit-concurrency: expected a whole '
         'number or "off", got True'),
        ("uds-mode = 660\n", '{path}, line 1: uds-mode: expected an octal file mode in '
         'quotes, such as "660", got 660'),
        ("debug = 1\n", "{path}, line 1: debug: expected true or false, got 1"),
        ("fd = [3, true]\n", "{path}, line 1: fd: expected a whole number, got True"),
        ("bind = [8000]\n", "{path}, line 1: bind: expected text, got 8000"),
        ("max-body-size = inf\n", "{path}, line 1: max-body-size: invalid size 'inf'"),
        ("max-body-size = nan\n", "{path}, line 1: max-body-size: invalid size 'nan'"),
        ("max-memory = -1\n", "{path}, line 1: max-memory: invalid size '-1'"),
        ("ws-max-size = -1\n", "{path}, line 1: ws-max-size: invalid size '-1'"),
        ("keep-alive = inf\n", "{path}, line 1: keep-alive: expected a number of seconds"),
        ("timeout = nan\n", "{path}, line 1: timeout: expected a number of seconds"),
        ("ws-ping-interval = -inf\n", "{path}, line 1: ws-ping-interval: expected a number"),
        ("graceful-timeout = 1e400\n", "{path}, line 1: graceful-timeout: expected a number"),
    ],
)  # fmt: skip
def test_bad_file_values_name_the_file_and_line(tmp_path: Path, text: str, message: str) -> None:
    path = write(tmp_path / "rrproxy.toml", text)
    with pytest.raises(ConfigError) as caught:
        settings(["--config", str(path), "a:b"])
    assert str(caught.value).startswith(message.format(path=path))


def test_a_missing_config_file_is_an_error_only_when_named(tmp_path: Path) -> None:
    with pytest.raises(ConfigError, match=r"^cannot read --config .*nope\.toml: No such file"):
        settings(["--config", str(tmp_path / "nope.toml"), "a:b"])


def test_tool_rrproxy_must_be_a_table(tmp_path: Path) -> None:
    write(tmp_path / "pyproject.toml", '[tool]\nrrproxy = "yes"\n')
    with pytest.raises(ConfigError, match=r"pyproject\.toml: \[tool\.rrproxy\] must be a table"):
        settings(["a:b"])


def test_the_line_named_is_the_one_in_the_rrproxy_table(tmp_path: Path) -> None:
    path = write(
        tmp_path / "pyproject.toml",
        '[tool.pytest.ini_options]\ntimeout = 60\n\n[tool.rrproxy]\ntimeout = "soon"\n',
    )
    with pytest.raises(ConfigError) as caught:
        settings(["a:b"])
    assert str(caught.value).startswith(f"{path}, line 5: timeout:")


@pytest.mark.parametrize(
    ("text", "line"),
    [
        # Dotted keys, and an inline table (named by its own line).
        ('[tool.pytest.ini_options]\ntimeout = 60\n[tool]\nrrproxy.timeout = "soon"\n', 4),
        ('[tool.other]\ntimeout = 60\n[tool]\nrrproxy = { timeout = "soon" }\n', 4),
        ('tool.other.timeout = 60\ntool.rrproxy.timeout = "soon"\n', 2),
        ('[ tool . "rrproxy" ]  # quoted, spaced\n\ntimeout = "soon"\n', 3),
        ('[[tool.other]]\ntimeout = 1\n[tool.rrproxy]\ntimeout = "soon"\n', 4),
    ],
)  # fmt: skip
def test_the_line_named_follows_tables_and_dotted_keys(
    tmp_path: Path, text: str, line: int
) -> None:
    path = write(tmp_path / "pyproject.toml", text)
    with pytest.raises(ConfigError) as caught:
        settings(["a:b"])
    assert str(caught.value).startswith(f"{path}, line {line}: timeout:")


def test_the_origin_is_the_line_in_the_rrproxy_table(tmp_path: Path) -> None:
    path = write(
        tmp_path / "pyproject.toml",
        "[tool.other]\nworkers = 9\n\n[tool.rrproxy]\nworkers = 2\n\n[[tool.more]]\nworkers = 1\n",
    )
    s = settings(["a:b"])
    assert s["workers"] == 2 and s.origins["workers"] == f"{path}, line 5"


def test_the_line_named_is_not_inside_a_multi_line_string(tmp_path: Path) -> None:
    path = write(
        tmp_path / "rrproxy.toml",
        "access-log-format = \"\"\"\nworkers = 1\n\"\"\"\nroot-path = '''\nworkers = 2'''\n"
        'workers = "four"\n',
    )
    with pytest.raises(ConfigError) as caught:
        settings(["--config", str(path), "a:b"])
    assert str(caught.value).startswith(f"{path}, line 6: workers:")


def test_toml_numbers_and_booleans_where_they_make_sense(tmp_path: Path) -> None:
    path = write(
        tmp_path / "rrproxy.toml",
        "limit-concurrency = 100\nmax-body-size = 1.5e3\nws-max-size = 4096\n"
        'uds-mode = "600"\nkeep-alive = 2\nfd = [3, "4"]\nfactory = true\n',
    )
    s = settings(["--config", str(path), "a:b"])
    assert s["limit_concurrency"] == 100
    assert s["max_body_size"] == 1500
    assert s["ws_max_size"] == 4096
    assert s["uds_mode"] == 0o600
    assert s["keep_alive"] == 2.0 and isinstance(s["keep_alive"], float)
    assert s["fd"] == (3, 4)
    assert s["factory"] is True
    write(path, 'limit-concurrency = "off"\n')
    assert settings(["--config", str(path), "a:b"])["limit_concurrency"] is None


def test_coerce_takes_toml_native_types() -> None:
    assert coerce(BY_NAME["keep_alive"], 5) == 5.0
    assert coerce(BY_NAME["keep_alive"], 2.5) == 2.5
    assert coerce(BY_NAME["max_body_size"], 4096) == 4096
    assert coerce(BY_NAME["max_body_size"], "4k") == 4096
    assert coerce(BY_NAME["debug"], True) is True
    assert coerce(BY_NAME["bind"], "a:1,b:2") == ("a:1", "b:2")
    assert coerce(BY_NAME["limit_concurrency"], 7) == 7
    with pytest.raises(ConfigError, match="expected text, got"):
        coerce(BY_NAME["host"], 5)
    with pytest.raises(ConfigError, match=r"^expected a whole number, got '2\.5'"):
        coerce(BY_NAME["limit_concurrency"], 2.5)
    with pytest.raises(ConfigError, match="expected a list"):
        coerce(BY_NAME["bind"], {"a": 1})


# --- --print-config ------------------------------------------------------------------------------


def test_print_config_shows_values_and_origins_and_hides_secrets() -> None:
    s = settings(
        ["--admin-token", "s3cret", "--port", "9000", "a:b"], {"RRPROXY_POLICY": "least-conn"}
    )
    out = io.StringIO()
    print_config(s, out)
    lines = {line.split()[0]: line for line in out.getvalue().splitlines()}
    assert "s3cret" not in out.getvalue()
    assert "'****'" in lines["admin-token"]
    assert lines["port"].split()[1:] == ["9000", "command", "line"]
    assert "'least-conn'" in lines["policy"] and "environment ($RRPROXY_POLICY)" in lines["policy"]
    assert lines["uds-mode"].split()[1] == "'660'"
    assert lines["backlog"].endswith("default")
    assert "config" not in lines and "print-config" not in lines
