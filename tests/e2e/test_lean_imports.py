"""A worker imports only what it runs, and the front only what it needs at start:
checked in real processes, so a stray import anywhere in the chain fails here."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pytest

from tests.helpers import REPO, RRProxy, get

#: Never in a worker: the front's and the command line's machinery.
FORBIDDEN_IN_WORKERS = (
    "rich",
    "prometheus_client",
    "rrproxy.front",
    "rrproxy.control",
    "rrproxy.dashboard_link",
    "rrproxy.sources",
    "rrproxy.options",
    "rrproxy.api",
    "watchfiles",
    "yaml",
)

APP = """\
import sys

async def handler(request):
    return {"modules": sorted(sys.modules)}

async def app(scope, receive, send):
    if scope["type"] == "lifespan":
        while True:
            kind = (await receive())["type"]
            await send({"type": kind + ".complete"})
            if kind == "lifespan.shutdown":
                return
    import json
    await send({"type": "http.response.start", "status": 200, "headers": []})
    await send({"type": "http.response.body", "body": json.dumps(
        {"modules": sorted(sys.modules)}).encode()})
"""


def _forbidden(modules: list[str]) -> list[str]:
    return [
        m for m in modules if any(m == f or m.startswith(f + ".") for f in FORBIDDEN_IN_WORKERS)
    ]


@pytest.mark.parametrize(
    ("app", "extra"),
    [("native", ()), ("asgi", ()), ("native", ("--fork-server",)), ("asgi", ("--preload",))],
)
def test_a_worker_imports_only_what_it_runs(tmp_path: Path, app: str, extra: tuple[str, ...]):
    (tmp_path / "modsapp.py").write_text(APP)
    target = "modsapp:handler" if app == "native" else "modsapp:app"
    with RRProxy(*extra, "--app-dir", str(tmp_path), target, workers=1) as server:
        modules = json.loads(get(server.port).body)["modules"]
    assert "h11" in modules  # it did report its own modules
    assert _forbidden(modules) == []
    if app == "asgi" and not extra:
        # A fresh ASGI worker runs on asyncio: trio is the front's loop, not its own
        # (a fork server's zygote imports both, to share them).
        assert "asyncio" in modules
        assert not [m for m in modules if m == "trio" or m.startswith("trio.")]


def test_the_front_imports_its_metrics_machinery_only_when_asked():
    code = (
        "import sys, rrproxy.cli, rrproxy.front.main, rrproxy.front.admin\n"
        "print(sorted(m for m in sys.modules if m.split('.')[0] in "
        "('prometheus_client', 'rich', 'yaml', 'watchfiles', 'redis')))"
    )
    result = subprocess.run(
        [sys.executable, "-c", code], capture_output=True, text=True, timeout=60, cwd=REPO
    )
    assert result.returncode == 0, result.stderr
    assert result.stdout.strip() == "[]"
