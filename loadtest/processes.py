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


def stop_process_group(
    proc: subprocess.Popen,  # type: ignore[type-arg]
    grace: float = 15.0,
    *,
    term_group: bool = True,
    own_group: bool | None = None,
) -> int | None:
    """Stop `proc` and everything in its process group: SIGTERM (to the whole group,
    or with `term_group=False` to `proc` alone, as an operator stopping a server
    does), then SIGKILL to the group if it has not exited within `grace` seconds.
    Its exit code (None if it could not be reaped). The one stop helper of the
    benchmarks and the test suite; a process not in a group of its own only gets
    signals itself, so this never signals the caller's group. Pass `own_group=True`
    for a process started with start_new_session: its group is then killed even
    when the leader has already been reaped (workers it left behind)."""
    _running.discard(proc)
    if own_group is None:
        own_group = _own_group(proc)
    if proc.poll() is None:
        try:
            if term_group and own_group:
                os.killpg(proc.pid, signal.SIGTERM)
            else:
                proc.send_signal(signal.SIGTERM)
            proc.wait(grace)
        except ProcessLookupError:
            pass
        except subprocess.TimeoutExpired:
            pass
    if own_group:
        # Whatever the front left behind (workers of a front that misbehaved).
        try:
            os.killpg(proc.pid, signal.SIGKILL)
        except (ProcessLookupError, PermissionError):
            pass
    elif proc.poll() is None:
        proc.kill()
    try:
        return proc.wait(5)
    except subprocess.TimeoutExpired:
        return None


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
