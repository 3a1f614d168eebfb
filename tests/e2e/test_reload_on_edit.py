"""--reload: editing the app while clients keep requesting rolls the workers over with
no failed request; a syntax error or an import-time error keeps the old workers (and
the syntax error is reported once); files outside --reload-include are ignored."""

from __future__ import annotations

import threading
import time
from collections import Counter
from pathlib import Path

from tests.helpers import RRProxy, get, wait_until

APP = """\
import anyio

async def handler(request):
    await anyio.sleep(0.05)  # in flight while workers are replaced
    return "{version}"
"""


class Clients:
    """Threads requesting on fresh connections until stopped; every outcome counted."""

    def __init__(self, port: int, threads: int = 3) -> None:
        self.port = port
        self.bodies: Counter[str] = Counter()
        self.failures: list[str] = []
        self.latest = ""
        self._stop = threading.Event()
        self._threads = [threading.Thread(target=self._run, daemon=True) for _ in range(threads)]

    def _run(self) -> None:
        while not self._stop.is_set():
            try:
                response = get(self.port, timeout=10)
                if response.status != 200:
                    self.failures.append(f"status {response.status}: {response.body!r}")
                else:
                    self.latest = response.body.decode()
                    self.bodies[self.latest] += 1
            except OSError as exc:
                self.failures.append(repr(exc))

    def __enter__(self) -> Clients:
        for thread in self._threads:
            thread.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self._stop.set()
        for thread in self._threads:
            thread.join(15)


def _wait_for_version(clients: Clients, version: str) -> None:
    wait_until(lambda: clients.latest == version, 40, 0.05, what=f"{version} served")


def test_edits_reload_without_a_failed_request(tmp_path: Path):
    app = tmp_path / "editable.py"
    app.write_text(APP.format(version="v1"))
    (tmp_path / "notes.txt").write_text("not code")
    args = ("--reload", "--app-dir", str(tmp_path), "--reload-dir", str(tmp_path))
    with RRProxy(*args, "editable:handler", workers=2) as server:
        server.wait_for(r"watching .* for changes")
        assert get(server.port).body == b"v1"
        with Clients(server.port) as clients:
            time.sleep(0.5)
            app.write_text(APP.format(version="v2"))
            _wait_for_version(clients, "v2")
            server.wait_for(r"reload complete: 2 workers replaced")

            # A file the includes do not name: no reload.
            reloads = server.output().count("reloading")
            (tmp_path / "notes.txt").write_text("still not code")
            time.sleep(1.5)
            assert server.output().count("reloading") == reloads

            # A syntax error: reported once (however often it is saved), nothing
            # restarted, v2 keeps answering.
            app.write_text("def handler(:\n")
            server.wait_for(r"not reloading, the workers keep the old code: .*editable.py:1")
            app.write_text("def handler(:\n")  # saved again, same error
            time.sleep(1.5)
            assert server.output().count("not reloading") == 1
            assert clients.latest == "v2"

            # An error only importing shows: the first replacement fails, the old
            # workers keep serving.
            app.write_text("raise RuntimeError('broken at import')\n")
            server.wait_for(r"reload aborted: the remaining workers keep their old code")
            time.sleep(0.5)
            assert clients.latest == "v2"

            app.write_text(APP.format(version="v3"))
            _wait_for_version(clients, "v3")
            time.sleep(0.5)
        assert clients.failures == [], clients.failures[:5]
        assert clients.bodies["v1"] and clients.bodies["v2"] and clients.bodies["v3"]
        assert sum(clients.bodies.values()) > 100, clients.bodies
        assert "broken at import" in server.output()
