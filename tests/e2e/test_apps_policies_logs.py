"""What users bring: app factories (--factory), their own scheduling policy
(--policy module:Class, the documented example and careless ones), their logging
setup (--log-config, --log-format json, --access-log-format), and what `ps` shows."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from collections import Counter
from pathlib import Path

import pytest

from tests.helpers import PROBE, REPO, RRProxy, get, worker_pids

# --- factories --------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("spec", "body"),
    [
        ("tests.apps.factories:create_asgi_app", b"built by a factory"),
        ("tests.apps.factories:create_wsgi_app", b"wsgi from a factory"),
        # Async: built on the loop that then serves it (a pool made in the factory works).
        ("tests.apps.factories:create_app_on_the_loop", b"same loop: True"),
    ],
)
def test_factory(spec: str, body: bytes):
    with RRProxy("--factory", spec, workers=2) as server:
        assert {get(server.port).body for _ in range(4)} == {body}


@pytest.mark.parametrize(
    ("args", "expected"),
    [
        # A factory without --factory fails at boot, naming what it found: never a
        # server that answers 500 to everything.
        (["tests.apps.factories:create_asgi_app"], "taking 0 positional arguments"),
        (["--factory", "tests.apps.factories:factory_that_raises"],
         "factory_that_raises() raised RuntimeError: no database"),
        (["--factory", "tests.apps.factories:factory_returning_nothing"], "returned NoneType"),
    ],
)  # fmt: skip
def test_factory_mistakes_exit_2_at_boot(args: list[str], expected: str):
    result = subprocess.run(
        [sys.executable, "-m", "rrproxy", "--port", "0", "-w", "2", *args],
        cwd=REPO, capture_output=True, text=True, timeout=60,
    )  # fmt: skip
    assert result.returncode == 2, result
    assert expected in result.stderr
    if "0 positional" in expected:
        assert "--factory" in result.stderr


# --- custom policies ---------------------------------------------------------------------


def test_lowest_slot_policy_example():
    with RRProxy("--policy", "workers.lowest_slot_policy:LowestSlot", PROBE, workers=3) as server:
        served = Counter(get(server.port).header("x-worker-id") for _ in range(30))
        assert served == Counter({"1": 30})
        server.wait_for(r"policy workers\.lowest_slot_policy:LowestSlot")
        # Worker 1 gone: the next lowest takes everything, and 1 gets it back after.
        os.kill(server.pids[1], 9)
        served = Counter(get(server.port).header("x-worker-id") for _ in range(10))
        assert set(served) <= {"1", "2"} and "3" not in served
        server.wait_for(rf"worker 1 ready \(pid (?!{server.pids[1]})")
        assert Counter(get(server.port).header("x-worker-id") for _ in range(10)) == Counter(
            {"1": 10}
        )


@pytest.mark.parametrize("policy", ["Raises", "ReturnsGarbage", "LastSlotOnly"])
def test_a_misbehaving_policy_never_stops_the_front(policy: str):
    with RRProxy("--policy", f"tests.apps.policies:{policy}", PROBE, workers=2) as server:
        if policy == "LastSlotOnly":
            os.kill(server.pids[2], 9)  # the slot it insists on is gone
        statuses = Counter(get(server.port).status for _ in range(40))
        assert statuses == Counter({200: 40})
        if policy != "LastSlotOnly":
            server.wait_for(r"round-robin used instead")
            assert server.output().count("round-robin used instead") == 1  # not per request
        assert server.proc.poll() is None


@pytest.mark.parametrize(
    ("name", "expected"),
    [
        ("tests.apps.policies:NoChoose", "has no choose() method"),
        ("tests.apps.policies:NeedsArguments", "TypeError"),
        ("tests.apps.no_such_module:Policy", "ModuleNotFoundError"),
    ],
)
def test_a_bad_policy_exits_2(name: str, expected: str):
    result = subprocess.run(
        [sys.executable, "-m", "rrproxy", "--port", "0", "--policy", name, PROBE],
        cwd=REPO, capture_output=True, text=True, timeout=60,
    )  # fmt: skip
    assert result.returncode == 2 and expected in result.stderr, result.stderr


# --- logging -----------------------------------------------------------------------------

DICT_CONFIG = {
    "version": 1,
    "disable_existing_loggers": False,
    "formatters": {"mine": {"format": "MINE %(levelname)s %(name)s | %(message)s"}},
    "handlers": {"out": {"class": "logging.StreamHandler", "formatter": "mine",
                         "stream": "ext://sys.stdout"}},
    "root": {"level": "INFO", "handlers": ["out"]},
}  # fmt: skip

INI_CONFIG = """\
[loggers]
keys=root

[handlers]
keys=out

[formatters]
keys=mine

[logger_root]
level=INFO
handlers=out

[handler_out]
class=StreamHandler
formatter=mine
args=(sys.stdout,)

[formatter_mine]
format=MINE %(levelname)s %(name)s | %(message)s
"""


@pytest.mark.parametrize("kind", ["json", "yaml", "ini"])
def test_log_config_file_shapes_front_and_worker_lines(tmp_path: Path, kind: str):
    path = tmp_path / f"logging.{kind}"
    if kind == "json":
        path.write_text(json.dumps(DICT_CONFIG))
    elif kind == "yaml":
        import yaml

        path.write_text(yaml.safe_dump(DICT_CONFIG))
    else:
        path.write_text(INI_CONFIG)
    with RRProxy("--log-config", str(path), "--access-log", PROBE, workers=2) as server:
        get(server.port, "/text")
        server.wait_for(r"MINE INFO rrproxy\.access \| .*GET /text")
        os.kill(server.pids[1], 9)
        server.wait_for(r"MINE WARNING rrproxy\.front \| worker 1 \(pid \d+\) exited")


def test_a_bad_log_config_exits_2(tmp_path: Path):
    path = tmp_path / "logging.json"
    path.write_text('{"version": 1, "handlers": {"x": {"class": "no.such.Handler"}}}')
    result = subprocess.run(
        [sys.executable, "-m", "rrproxy", "--port", "0", "--log-config", str(path), PROBE],
        cwd=REPO, capture_output=True, text=True, timeout=60,
    )  # fmt: skip
    assert result.returncode == 2
    assert f"--log-config {path}" in result.stderr and "Traceback" not in result.stderr


def test_json_logs_every_line_from_start_to_stop(tmp_path: Path):
    with RRProxy("--log-format", "json", "--access-log", PROBE, workers=2) as server:
        get(server.port, "/json")
        os.kill(server.pids[2], 9)
        server.wait_for(r'"message": "worker 2 ready')
        server.wait_for(r'"path": "/json"')
    output = server.output().splitlines()
    messages = [json.loads(line)["message"] for line in output]  # every line parses
    assert any(m.startswith("listening on http://127.0.0.1:") for m in messages)
    assert any(m.startswith("worker 1 ready") for m in messages)
    assert messages[-1] == "stopped"
    failed = subprocess.run(
        [sys.executable, "-m", "rrproxy", "--port", "0", "--log-format", "json",
         "tests.apps.broken_import:handler"],
        cwd=REPO, capture_output=True, text=True, timeout=60,
    )  # fmt: skip
    assert failed.returncode == 2
    error = json.loads(failed.stderr.strip().splitlines()[-1])
    assert error["level"] == "error" and "cannot import module" in error["message"]


def test_access_log_format(tmp_path: Path):
    fmt = "{method} {path} -> {status} by worker {worker} in {duration_ms}ms"
    with RRProxy("--access-log", "--access-log-format", fmt, PROBE, workers=1) as server:
        get(server.port, "/text?x=1")
        server.wait_for(r"GET /text\?x=1 -> 200 by worker 1 in [\d.]+ms")
    bad = subprocess.run(
        [sys.executable, "-m", "rrproxy", "--access-log-format", "{nonsense}", PROBE],
        cwd=REPO, capture_output=True, text=True, timeout=60,
    )  # fmt: skip
    assert bad.returncode == 2 and "--access-log-format" in bad.stderr


# --- process titles ----------------------------------------------------------------------


def _title(pid: int) -> str:
    with open(f"/proc/{pid}/cmdline", "rb") as file:
        return file.read().split(b"\0")[0].decode()


def test_process_titles():
    import setproctitle  # noqa: F401  (the test extra has it: a missing one fails here)

    with RRProxy(PROBE, workers=2) as server:
        front = _title(server.proc.pid)
        assert front == f"rrproxy: front {PROBE} [http://127.0.0.1:{server.port}]"
        titles = sorted(_title(pid) for pid in worker_pids(server.proc.pid))
        assert titles == [f"rrproxy: worker 1 {PROBE}", f"rrproxy: worker 2 {PROBE}"]
