"""Shared fixtures. Tools the tests need are installed here if missing, so the
README's one test command works on a fresh machine; nothing is silently skipped."""

from __future__ import annotations

import shutil
import subprocess

import pytest


@pytest.fixture(scope="session")
def wrk() -> str:
    path = shutil.which("wrk")
    if path is None:
        subprocess.run(["apt-get", "update", "-q"], check=True, capture_output=True, timeout=600)
        subprocess.run(
            ["apt-get", "install", "-y", "-q", "wrk"], check=True, capture_output=True, timeout=600
        )
        path = shutil.which("wrk")
    assert path, "wrk is needed and could not be installed with apt-get"
    return path
