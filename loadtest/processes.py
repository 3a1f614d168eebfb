"""Processes the benchmarks start, and stopping them: every server and wrk a
benchmark starts is tracked, and SIGINT or SIGTERM to the benchmark stops them all
before it exits (an interrupted bench once left an rrproxy and a wrk running)."""

from __future__ import annotations

import contextlib
import os
import signal
import subprocess
import sys
from collections.abc import Iterator
from types import FrameType

_running: set[subprocess.Popen] = set()  # type: ignore[type-arg]
_installed = False


def stop_process_group(proc: subprocess.Popen, grace: float = 15.0) -> None:  # type: ignore[type-arg]
    """SIGTERM to the process's group (it was started with start_new_session), then
    SIGKILL if it has not gone within `grace` seconds."""
    _running.discard(proc)
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


@contextlib.contextmanager
def track(proc: subprocess.Popen) -> Iterator[subprocess.Popen]:  # type: ignore[type-arg]
    """Stop `proc` if the benchmark is interrupted while it runs."""
    install_handlers()
    _running.add(proc)
    try:
        yield proc
    finally:
        _running.discard(proc)
        if proc.poll() is None:
            proc.kill()
            proc.wait(5)


def register(proc: subprocess.Popen) -> subprocess.Popen:  # type: ignore[type-arg]
    """A server in its own process group, stopped on interruption (and by
    stop_process_group)."""
    install_handlers()
    _running.add(proc)
    return proc


def install_handlers() -> None:
    global _installed
    if _installed:
        return
    _installed = True
    for signum in (signal.SIGINT, signal.SIGTERM):
        signal.signal(signum, _interrupted)


def _interrupted(signum: int, frame: FrameType | None) -> None:
    for proc in list(_running):
        try:
            if proc.poll() is None:
                os.killpg(proc.pid, signal.SIGKILL) if _own_group(proc) else proc.kill()
        except (ProcessLookupError, PermissionError):
            pass
    print(
        f"\ninterrupted ({signal.Signals(signum).name}): stopped what was running", file=sys.stderr
    )
    sys.exit(128 + signum)


def _own_group(proc: subprocess.Popen) -> bool:  # type: ignore[type-arg]
    try:
        return os.getpgid(proc.pid) == proc.pid
    except ProcessLookupError:
        return False
