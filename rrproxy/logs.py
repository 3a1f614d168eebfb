"""One log stream for the front and every worker: each line says who wrote it."""

from __future__ import annotations

import logging
import sys

LEVELS = ("critical", "error", "warning", "info", "debug")


def setup_logging(level: str, source: str) -> None:
    """`source` is e.g. "front 1234" or "worker 2 pid 1240"; workers inherit the
    front's stderr, so their lines interleave with the front's in one stream."""
    handler = logging.StreamHandler(sys.stderr)
    handler.setFormatter(
        logging.Formatter(
            f"%(asctime)s %(levelname)s [{source}] %(name)s: %(message)s",
            datefmt="%Y-%m-%d %H:%M:%S",
        )
    )
    root = logging.getLogger()
    root.handlers[:] = [handler]
    root.setLevel(level.upper())
