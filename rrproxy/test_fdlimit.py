"""raise_fd_limit: for real in a child process (the limits are per process), and
with a fake getrlimit for an unlimited hard limit, which no unprivileged test can
set up."""

from __future__ import annotations

import resource
import subprocess
import sys

import pytest

from . import fdlimit

CHILD = """
import resource
from rrproxy.fdlimit import raise_fd_limit
soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
resource.setrlimit(resource.RLIMIT_NOFILE, (min(256, hard), hard))
print(raise_fd_limit(), *resource.getrlimit(resource.RLIMIT_NOFILE), hard)
"""


def test_the_soft_limit_is_raised_to_the_hard_one_which_stays() -> None:
    result = subprocess.run(
        [sys.executable, "-c", CHILD], capture_output=True, text=True, timeout=30, check=True
    )
    now, soft, hard, hard_before = map(int, result.stdout.split())
    assert now == soft == hard == hard_before


def test_an_unlimited_hard_limit_is_kept_unlimited(monkeypatch: pytest.MonkeyPatch) -> None:
    calls: list[tuple[int, int]] = []
    monkeypatch.setattr(resource, "getrlimit", lambda kind: (1024, resource.RLIM_INFINITY))
    monkeypatch.setattr(resource, "setrlimit", lambda kind, limits: calls.append(limits))
    assert fdlimit.raise_fd_limit() == 1 << 20
    assert calls == [(1 << 20, resource.RLIM_INFINITY)]


def test_a_refusal_leaves_the_limit_as_it_was(monkeypatch: pytest.MonkeyPatch) -> None:
    def refuse(kind: int, limits: tuple[int, int]) -> None:
        raise ValueError("not allowed")

    monkeypatch.setattr(resource, "getrlimit", lambda kind: (1024, 4096))
    monkeypatch.setattr(resource, "setrlimit", refuse)
    assert fdlimit.raise_fd_limit() == 1024
