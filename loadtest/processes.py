"""Stopping a server started in its own process group: SIGTERM, then SIGKILL if it
does not go within `grace` seconds. Used by the benchmarks and the tests."""

from __future__ import annotations

import os
import signal
import subprocess


def stop_process_group(proc: subprocess.Popen, grace: float = 15.0) -> None:  # type: ignore[type-arg]
    if proc.poll() is not None:
        return
    try:
        os.killpg(proc.pid, signal.SIGTERM)
        proc.wait(grace)
    except ProcessLookupError:
        return
    except subprocess.TimeoutExpired:
        try:
            os.killpg(proc.pid, signal.SIGKILL)
        except ProcessLookupError:
            pass
        proc.wait(5)
