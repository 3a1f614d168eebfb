"""Closing file descriptors that may already be gone: the one place that does it.

A received descriptor that nobody keeps must be closed (SCM_RIGHTS hands the receiver
a new reference), and at that point EBADF or EINTR on close mean nothing can be done:
Linux releases the descriptor even when close() reports EINTR, so a retry could close
someone else's. Hence: close once, ignore the error.
"""

from __future__ import annotations

import os
from collections.abc import Iterable


def close_quietly(fd: int) -> None:
    """Close `fd`, ignoring the error if it is already closed."""
    try:
        os.close(fd)
    except OSError:
        pass


def close_fds(fds: Iterable[int]) -> None:
    """Close every descriptor in `fds` (received and not kept), ignoring errors."""
    for fd in fds:
        close_quietly(fd)
