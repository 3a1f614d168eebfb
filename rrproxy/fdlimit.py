"""Raise the soft open-files limit to the hard one, as servers do: the default soft
limit (often 1024) is far below what --max-connections allows."""

from __future__ import annotations

import resource


def raise_fd_limit() -> int:
    """Raise the soft RLIMIT_NOFILE to the hard limit (2**20 when that is unlimited);
    the soft limit now in force. Left as it is where the kernel refuses."""
    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    target = 1 << 20 if hard == resource.RLIM_INFINITY else hard
    if soft == resource.RLIM_INFINITY or soft >= target:
        return soft
    try:
        # The hard limit is passed back as it was: (target, target) would lower an
        # unlimited hard limit for good (only root can raise it again), and for the
        # workers and whatever they start too.
        resource.setrlimit(resource.RLIMIT_NOFILE, (target, hard))
    except (ValueError, OSError):
        return soft
    return target
