"""Raise the soft open-files limit to the hard one, as servers do: the default soft
limit (often 1024) is far below what --max-connections allows."""

from __future__ import annotations

import resource


def raise_fd_limit() -> int:
    """Raise the soft RLIMIT_NOFILE to the hard limit (2**20 when that is unlimited);
    the soft limit now in force. Left as it is where the kernel refuses."""
    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    if hard == resource.RLIM_INFINITY:
        hard = 1 << 20
    if soft == resource.RLIM_INFINITY or soft >= hard:
        return soft
    try:
        resource.setrlimit(resource.RLIMIT_NOFILE, (hard, hard))
    except (ValueError, OSError):
        return soft
    return hard
