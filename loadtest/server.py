"""Start and stop an rrproxy under test, and read its /status (server-side truth)."""

from __future__ import annotations

import re
import subprocess
import sys
import threading
import time
from pathlib import Path

from rrproxy.control import AdminClient

from .processes import register, stop_process_group

REPO = Path(__file__).resolve().parent.parent
_LISTENING = re.compile(r"rrproxy: listening on http://([^ ]+):(\d+) ")


class ServerUnderTest:
    def __init__(
        self, app: str, policy: str, workers: int, admin: Path, extra: tuple[str, ...] = ()
    ) -> None:
        self.argv = [
            sys.executable,
            "-m",
            "rrproxy",
            "--host",
            "127.0.0.1",
            "--port",
            "0",
            "--workers",
            str(workers),
            "--policy",
            policy,
            "--admin",
            f"unix:{admin}",
            "--log-level",
            "warning",
            *extra,
            app,
        ]
        self.admin = AdminClient(f"unix:{admin}")
        self.proc: subprocess.Popen[str] | None = None
        self.output: list[str] = []
        self.port = 0

    def start(self, timeout: float = 60.0) -> None:
        self.proc = register(
            subprocess.Popen(
                self.argv,
                cwd=REPO,
                stdout=subprocess.PIPE,
                stderr=subprocess.STDOUT,
                text=True,
                start_new_session=True,
            )
        )
        found = threading.Event()

        def pump() -> None:
            assert self.proc is not None and self.proc.stdout is not None
            for line in self.proc.stdout:
                self.output.append(line)
                match = _LISTENING.search(line)
                if match:
                    self.port = int(match.group(2))
                    found.set()

        threading.Thread(target=pump, daemon=True).start()
        if not found.wait(timeout):
            self.stop()
            raise RuntimeError("rrproxy did not start:\n" + "".join(self.output[-20:]))

    def status(self) -> dict:
        return self.admin.json("GET", "/status")

    def stop(self) -> None:
        if self.proc is None:
            return
        stop_process_group(self.proc, grace=30)
        time.sleep(0.2)
