"""One configuration from four sources (command line > environment > file > default),
through the real `rrproxy` command: --print-config says where each value came from,
a served cluster shows the value took effect, and a bad file names its line."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pytest

from tests.helpers import PROBE, REPO, RRProxy, get, worker_pids


def _rrproxy(
    *args: str, cwd: Path = REPO, env: dict[str, str] | None = None, timeout: float = 30
) -> subprocess.CompletedProcess[str]:
    clean = {k: v for k, v in os.environ.items() if not k.startswith("RRPROXY_")}
    clean.pop("WEB_CONCURRENCY", None)
    clean["PYTHONPATH"] = str(REPO)
    return subprocess.run(
        [sys.executable, "-m", "rrproxy", *args],
        cwd=cwd,
        env={**clean, **(env or {})},
        capture_output=True,
        text=True,
        timeout=timeout,
    )


def _printed(result: subprocess.CompletedProcess[str]) -> dict[str, tuple[str, str]]:
    """--print-config as {option: (value, origin)}."""
    assert result.returncode == 0, result.stderr
    table = {}
    for line in result.stdout.splitlines():
        name, rest = line.split(None, 1)
        value, origin = rest.rsplit("  ", 1)
        table[name] = (value.strip(), origin.strip())
    return table


def test_each_source_overrides_the_one_below(tmp_path: Path):
    config = tmp_path / "rrproxy.toml"
    config.write_text(
        'app = "tests.apps.probe:handler"\n'
        "workers = 3\n"
        'max-body-size = "2m"\n'
        "keep_alive = 7.5\n"
        'bind = ["127.0.0.1:0"]\n'
    )
    only_file = _printed(_rrproxy("--config", str(config), "--print-config"))
    assert only_file["workers"] == ("3", f"{config}, line 2")
    assert only_file["max-body-size"] == ("2097152", f"{config}, line 3")
    assert only_file["keep-alive"] == ("7.5", f"{config}, line 4")
    assert only_file["policy"] == ("'rr'", "default")

    env = {"RRPROXY_WORKERS": "4", "RRPROXY_KEEP_ALIVE": "9", "RRPROXY_POLICY": "least-conn"}
    with_env = _printed(_rrproxy("--config", str(config), "--print-config", env=env))
    assert with_env["workers"] == ("4", "environment ($RRPROXY_WORKERS)")
    assert with_env["keep-alive"] == ("9.0", "environment ($RRPROXY_KEEP_ALIVE)")
    assert with_env["max-body-size"] == ("2097152", f"{config}, line 3")
    assert with_env["policy"] == ("'least-conn'", "environment ($RRPROXY_POLICY)")

    with_cli = _printed(
        _rrproxy("--config", str(config), "--print-config", "-w", "5", "--policy", "rr", env=env)
    )
    assert with_cli["workers"] == ("5", "command line")
    assert with_cli["policy"] == ("'rr'", "command line")
    assert with_cli["keep-alive"] == ("9.0", "environment ($RRPROXY_KEEP_ALIVE)")


def test_web_concurrency_sets_workers_below_rrproxy_workers():
    assert _printed(_rrproxy("--print-config", PROBE, env={"WEB_CONCURRENCY": "3"}))["workers"] == (
        "3",
        "environment ($WEB_CONCURRENCY)",
    )
    both = {"WEB_CONCURRENCY": "3", "RRPROXY_WORKERS": "2"}
    assert _printed(_rrproxy("--print-config", PROBE, env=both))["workers"][0] == "2"


def test_secrets_are_not_printed():
    result = _rrproxy("--print-config", "--admin-token", "s3cr3t-token", PROBE)
    assert "s3cr3t-token" not in result.stdout
    assert _printed(result)["admin-token"] == ("'****'", "command line")


def test_the_file_really_configures_the_cluster(tmp_path: Path):
    (tmp_path / "pyproject.toml").write_text(
        '[project]\nname = "demo"\n\n[tool.rrproxy]\nworkers = 3\nmax-body-size = 10\n'
    )
    # RRProxy passes --workers itself; the file's other value must take effect.
    with RRProxy("--app-dir", str(tmp_path), PROBE, workers=3, cwd=REPO) as server:
        assert len(worker_pids(server.proc.pid)) == 3
        from tests.helpers import RawClient

        client = RawClient(server.port)
        client.send(b"POST /echo HTTP/1.1\r\nHost: t\r\nContent-Length: 11\r\n\r\nhello world")
        assert client.read_response().status == 413  # max-body-size = 10, from the file
        client.close()


def test_pyproject_table_is_found_from_the_working_directory(tmp_path: Path):
    (tmp_path / "pyproject.toml").write_text(
        '[tool.rrproxy]\napp = "tests.apps.probe:handler"\nworkers = 2\nport = 0\n'
    )
    printed = _printed(_rrproxy("--print-config", cwd=tmp_path))
    where = f"{tmp_path / 'pyproject.toml'}, line 2"
    assert printed["app"] == ("'tests.apps.probe:handler'", where)
    with_server = subprocess.Popen(
        [sys.executable, "-m", "rrproxy"],
        cwd=tmp_path,
        env={**os.environ, "PYTHONPATH": str(REPO), "PYTHONUNBUFFERED": "1"},
        stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT,
        text=True,
    )
    try:
        assert with_server.stdout is not None
        for line in with_server.stdout:
            if "listening on" in line:
                port = int(line.split("http://127.0.0.1:")[1].split()[0])
                break
        else:
            raise AssertionError("never listened")
        assert get(port).status == 200
    finally:
        with_server.terminate()
        assert with_server.wait(20) == 0


@pytest.mark.parametrize(
    ("text", "line", "expected"),
    [
        ('app = "a:b"\nworkers = 2\nwrokers = 3\n', 3, "unknown option 'wrokers'"),
        ('app = "a:b"\n\nworkers = "many"\n', 3, "workers: expected a whole number"),
        ('policy = "rr"\nlog-level = "loud"\n', 2, "log-level: must be one of"),
        ("max-body-size = true\n", 1, "max-body-size: expected"),
        ("config = 'other.toml'\n", 1, "unknown option 'config'"),
    ],
)
def test_a_bad_file_names_its_line(tmp_path: Path, text: str, line: int, expected: str):
    config = tmp_path / "bad.toml"
    config.write_text(text)
    result = _rrproxy("--config", str(config), PROBE)
    assert result.returncode == 2
    assert f"rrproxy: error: {config}, line {line}: {expected}" in result.stderr
    assert "Traceback" not in result.stderr


def test_invalid_toml_and_missing_file(tmp_path: Path):
    config = tmp_path / "broken.toml"
    config.write_text("workers = [\n")
    result = _rrproxy("--config", str(config), PROBE)
    assert result.returncode == 2 and f"{config}: not valid TOML" in result.stderr
    result = _rrproxy("--config", str(tmp_path / "absent.toml"), PROBE)
    assert result.returncode == 2 and "cannot read --config" in result.stderr


def test_a_bad_environment_value_names_the_variable():
    result = _rrproxy(PROBE, env={"RRPROXY_MAX_BODY_SIZE": "lots"})
    assert result.returncode == 2
    assert "$RRPROXY_MAX_BODY_SIZE" in result.stderr and "Traceback" not in result.stderr


# --- argparse hygiene -------------------------------------------------------------------


def test_prefixes_are_not_expanded():
    result = _rrproxy("--work", "1", PROBE)
    assert result.returncode == 2 and "unrecognized arguments: --work" in result.stderr
    # uvicorn's spelling: --reload right after the app, no prefix confusion with
    # --reload-batch (it starts watching; --print-config shows it took).
    printed = _printed(_rrproxy(PROBE, "--reload", "--print-config"))
    assert printed["reload"] == ("True", "command line")


def test_short_flags():
    printed = _printed(_rrproxy("-w", "3", "-b", "127.0.0.1:0", "-b", "unix:/tmp/x.sock",
                                "--print-config", PROBE))  # fmt: skip
    assert printed["workers"] == ("3", "command line")
    assert printed["bind"] == ("('127.0.0.1:0', 'unix:/tmp/x.sock')", "command line")


def test_help_is_grouped_like_the_peers():
    result = _rrproxy("--help")
    assert result.returncode == 0
    for group in ("server:", "app:", "development:", "limits:", "lifecycle:", "TLS",
                  "admin interface and logs:", "configuration:"):  # fmt: skip
        assert group in result.stdout, group
    server = result.stdout.split("server:")[1].split("app:")[0]
    assert "--bind" in server and "--uds" in server and "--fd" in server


# --- the app's environment -------------------------------------------------------------


def test_env_file_reaches_the_workers(tmp_path: Path):
    env_file = tmp_path / ".env"
    env_file.write_text('# settings\nexport GREETING="hello there"\nEMPTY=\nPLAIN=x=y\n')
    app = tmp_path / "envapp.py"
    app.write_text(
        "import os\n"
        "async def handler(request):\n"
        "    return {k: os.environ.get(k) for k in ('GREETING', 'EMPTY', 'PLAIN')}\n"
    )
    with RRProxy("--app-dir", str(tmp_path), "--env-file", str(env_file), "envapp:handler",
                 workers=1, env={"PLAIN": "from the environment"}) as server:  # fmt: skip
        import json

        # The file fills in; a variable the environment already has wins (uvicorn's rule).
        assert json.loads(get(server.port).body) == {
            "GREETING": "hello there",
            "EMPTY": "",
            "PLAIN": "from the environment",
        }


def test_bad_env_file_names_the_line(tmp_path: Path):
    env_file = tmp_path / ".env"
    env_file.write_text("OK=1\nthis is not an assignment\n")
    result = _rrproxy("--env-file", str(env_file), PROBE)
    assert result.returncode == 2
    assert f"{env_file}, line 2: expected KEY=VALUE" in result.stderr


def test_missing_hiredis_names_the_extra():
    code = (
        "import sys; sys.modules['hiredis'] = None\n"  # as if it were not installed
        "from rrproxy.cli import main\n"
        "main(['--port', '0', '--state', 'redis://127.0.0.1:6379/0', "
        "'tests.apps.probe:handler'])\n"
    )
    result = subprocess.run(
        [sys.executable, "-c", code], cwd=REPO, capture_output=True, text=True, timeout=30
    )
    assert result.returncode == 2
    assert "pip install 'rrproxy[redis]'" in result.stderr
