"""rrproxy.run() and rrproxy.Config from a user's script, as uvicorn.run is used: a
string spec, an app object defined in the script itself, a Config built first, and
mistakes reported as ConfigError."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import textwrap
from pathlib import Path

import pytest

from tests.helpers import REPO, get, wait_until

SCRIPT = textwrap.dedent(
    """
    import os
    import rrproxy

    async def app(scope, receive, send):
        if scope["type"] != "http":
            return
        await send({"type": "http.response.start", "status": 200, "headers": []})
        body = f"from the script {os.getpid()}".encode()
        await send({"type": "http.response.body", "body": body})

    if __name__ == "__main__":
        code = {call}
        print("run returned", code, flush=True)
    """
)


def _serve(tmp_path: Path, call: str) -> tuple[subprocess.Popen[str], int, list[str]]:
    script = tmp_path / "serve.py"
    script.write_text(SCRIPT.replace("{call}", call))
    proc = subprocess.Popen(
        [sys.executable, str(script)],
        cwd=tmp_path,
        stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT,
        text=True,
        env={**os.environ, "PYTHONPATH": str(REPO), "PYTHONUNBUFFERED": "1"},
        start_new_session=True,
    )
    lines: list[str] = []
    assert proc.stdout is not None
    for line in proc.stdout:
        lines.append(line)
        if "listening on http://" in line:
            port = int(line.split("http://127.0.0.1:")[1].split()[0])
            return proc, port, lines
    raise AssertionError("".join(lines))


@pytest.mark.parametrize(
    "call",
    [
        'rrproxy.run(app, port=0, workers=2, max_body_size="1k")',
        'rrproxy.run("serve:app", bind=["127.0.0.1:0"], workers=2)',
        'rrproxy.run(rrproxy.Config(app, port=0, workers=2, loop="asyncio"))',
    ],
)
def test_run_from_a_script(tmp_path: Path, call: str):
    proc, port, _ = _serve(tmp_path, call)
    try:
        pids = {get(port).body.decode().rsplit(" ", 1)[1] for _ in range(6)}
        assert len(pids) == 2 and str(proc.pid) not in pids  # served by two workers
        assert get(port).body.startswith(b"from the script")
        proc.send_signal(signal.SIGTERM)
        out, _ = proc.communicate(timeout=30)
        assert proc.returncode == 0
        assert "run returned 0" in out
    finally:
        if proc.poll() is None:
            os.killpg(proc.pid, signal.SIGKILL)
            proc.wait(10)


def test_config_errors_are_raised_not_exited():
    code = textwrap.dedent(
        """
        import rrproxy
        for kwargs in ({"wrokers": 2}, {"workers": "two"}, {"policy": "nonsense"},
                       {"reload": "yes"}):
            try:
                rrproxy.Config("tests.apps.probe:handler", **kwargs)
            except rrproxy.ConfigError as exc:
                print("ConfigError:", exc)
        try:
            rrproxy.Config(lambda scope, receive, send: None)
        except ValueError as exc:
            print("ValueError:", exc)
        config = rrproxy.Config("tests.apps.probe:handler", workers=3, bind="unix:/tmp/x.sock")
        print(config.workers, config.binds, config.worker.app)
        """
    )
    result = subprocess.run(
        [sys.executable, "-c", code], cwd=REPO, capture_output=True, text=True, timeout=30
    )
    assert result.returncode == 0, result.stderr
    lines = result.stdout.splitlines()
    assert lines[0] == "ConfigError: unknown option 'wrokers'"
    assert lines[1] == "ConfigError: workers: expected a whole number, got 'two'"
    assert lines[2].startswith("ConfigError: --policy must be one of")
    assert lines[3] == "ConfigError: reload: expected True or False, got 'yes'"
    assert lines[4].startswith("ValueError:") and "module:attribute" in lines[4]
    assert lines[5] == "3 ('unix:/tmp/x.sock',) tests.apps.probe:handler"


def test_run_reports_a_port_in_use(tmp_path: Path):
    import socket

    with socket.socket() as taken:
        taken.bind(("127.0.0.1", 0))
        taken.listen()
        port = taken.getsockname()[1]
        script = tmp_path / "busy.py"
        script.write_text(
            "import rrproxy\n"
            "try:\n"
            f"    rrproxy.run('tests.apps.probe:handler', port={port}, workers=1)\n"
            "except Exception as exc:\n"
            "    print(type(exc).__name__, exc)\n"
        )
        result = subprocess.run(
            [sys.executable, str(script)], cwd=REPO, capture_output=True, text=True,
            timeout=30, env={**os.environ, "PYTHONPATH": str(REPO)},
        )  # fmt: skip
    assert f"BindError cannot bind 127.0.0.1:{port}: address already in use" in result.stdout


def test_no_workers_survive_the_script(tmp_path: Path):
    proc, port, _ = _serve(tmp_path, "rrproxy.run(app, port=0, workers=2)")
    pids = {int(get(port).body.decode().rsplit(" ", 1)[1]) for _ in range(6)}
    os.kill(proc.pid, signal.SIGINT)
    proc.communicate(timeout=30)

    def gone() -> bool:
        for pid in pids:
            try:
                os.kill(pid, 0)
            except ProcessLookupError:
                continue
            return False
        return True

    wait_until(gone, 10, what="the workers gone")
