"""Wrong input: exit status 2 and one clear line, never a traceback or a hang."""

from __future__ import annotations

import socket

import pytest

from tests.helpers import PROBE, REPO, run_cli


def _one_error_line(result) -> str:
    assert result.returncode == 2, result
    lines = [line for line in result.stderr.splitlines() if line.strip()]
    assert len(lines) == 1, result.stderr
    assert lines[0].startswith("rrproxy: error: ")
    assert "Traceback" not in result.stderr
    return lines[0]


@pytest.mark.parametrize(
    ("app", "expected"),
    [
        ("workers.hello", "APP must be of the form module:attribute"),
        ("workers.hello:", "APP must be of the form module:attribute"),
        (":handler", "APP must be of the form module:attribute"),
        ("no_such_module_xyz:handler", "cannot import module 'no_such_module_xyz'"),
        ("tests.apps.broken_import:handler", "ModuleNotFoundError"),
        ("tests.apps.probe:missing", "has no attribute 'missing'"),
        ("tests.apps.probe:not_callable", "is not callable (it is int)"),
    ],
)
def test_bad_app(app: str, expected: str) -> None:
    line = _one_error_line(run_cli("--port", "0", "--workers", "2", app))
    assert expected in line


def test_import_error_names_the_cause_and_place() -> None:
    line = _one_error_line(run_cli("--port", "0", "--workers", "1", "tests.apps.broken_syntax:h"))
    assert "SyntaxError" in line
    assert "broken_syntax.py" in line


def test_port_taken() -> None:
    with socket.socket() as taken:
        taken.bind(("127.0.0.1", 0))
        taken.listen()
        port = taken.getsockname()[1]
        line = _one_error_line(run_cli("--port", str(port), "--workers", "1", PROBE))
    assert f"cannot bind 127.0.0.1:{port}: address already in use" in line


@pytest.mark.parametrize(
    ("args", "expected"),
    [
        (["--port", "70000"], "--port must be between 0 and 65535"),
        (["--host", "192.0.2.1"], "cannot bind 192.0.2.1:0"),
        (["--workers", "0"], "--workers must be at least 1"),
        (["--workers", "two"], "--workers: expected a whole number"),
        (["--policy", "random"], "--policy must be one of"),
    ],
)
def test_bad_options(args: list[str], expected: str) -> None:
    line = _one_error_line(run_cli("--port", "0", *args, PROBE))
    assert expected in line


def test_help_documents_every_option() -> None:
    result = run_cli("--help")
    assert result.returncode == 0
    for option in (
        "--host",
        "--port",
        "--workers",
        "--policy",
        "--backlog",
        "--graceful-timeout",
        "--log-level",
        "--app-dir",
    ):
        assert option in result.stdout


def test_loop_uvloop_without_uvloop_names_the_extra():
    import subprocess
    import sys

    code = (
        "import sys; sys.modules['uvloop'] = None\n"  # as if it were not installed
        "from rrproxy.cli import main\n"
        "main(['--loop', 'uvloop', '--port', '0', 'workers.hello:handler'])\n"
    )
    result = subprocess.run(
        [sys.executable, "-c", code], capture_output=True, text=True, timeout=30, cwd=REPO
    )
    assert result.returncode == 2
    assert "rrproxy[uvloop]" in result.stderr
    assert "Traceback" not in result.stderr
