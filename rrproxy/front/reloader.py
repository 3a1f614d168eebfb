"""--reload: watch the app's files and roll the workers over when one changes.

As uvicorn's --reload (watchfiles, --reload-dir/--reload-include/--reload-exclude),
except that the change goes through the rolling reload SIGHUP uses: each new worker
imports the edited code beside the old one and takes its slot only once ready, so an
edit never drops a request. A Python file that no longer compiles is reported once,
here, and the workers keep the old code; an error that only shows at import time
(a NameError at module level) fails the first replacement instead, with the same
result.
"""

from __future__ import annotations

import fnmatch
import logging
import os
from collections.abc import Iterable
from pathlib import Path
from typing import TYPE_CHECKING

import trio

if TYPE_CHECKING:
    from ..config import Config
    from .supervisor import Supervisor

log = logging.getLogger("rrproxy.front")

#: Editors write a file in several steps; one reload for the burst.
SETTLE = 0.1


class ChangeFilter:
    """Which paths count: a name matching an include glob and, on no part of its
    path, an exclude glob (so ".*" leaves out .git/ and editors' dot files)."""

    def __init__(self, includes: Iterable[str], excludes: Iterable[str]) -> None:
        self.includes = tuple(includes)
        self.excludes = tuple(excludes)

    def __call__(self, change: object, path: str) -> bool:
        parts = Path(path).parts
        if any(fnmatch.fnmatch(part, glob) for part in parts for glob in self.excludes):
            return False
        return any(fnmatch.fnmatch(parts[-1], glob) for glob in self.includes)


def syntax_errors(paths: Iterable[str]) -> list[str]:
    """The changed Python files that no longer compile, as one line each."""
    errors = []
    for path in sorted(paths):
        if not path.endswith(".py") or not os.path.isfile(path):
            continue
        try:
            source = Path(path).read_bytes()
            compile(source, path, "exec", dont_inherit=True)
        except SyntaxError as exc:
            errors.append(f"{path}:{exc.lineno}: {exc.msg}")
        except (OSError, ValueError) as exc:
            errors.append(f"{path}: {exc}")
    return errors


async def watch(config: Config, supervisor: Supervisor) -> None:
    """The --reload task: a rolling reload after each burst of changes under the
    --reload-dir directories (--app-dir by default), until cancelled."""
    try:
        from watchfiles import awatch
    except ImportError:
        log.error("--reload needs watchfiles: pip install 'rrproxy[reload]'")
        return
    dirs = [os.path.abspath(d) for d in config.reload_dirs] or [os.getcwd()]
    accept = ChangeFilter(config.reload_includes, config.reload_excludes)
    log.info("watching %s for changes", ", ".join(dirs))
    last_errors: list[str] = []
    # awatch is anyio, so it runs under trio and stops with this task's cancellation.
    async for changes in awatch(*dirs, watch_filter=accept, step=50, debounce=400):
        await trio.sleep(SETTLE)
        paths = {path for _, path in changes}
        errors = syntax_errors(paths)
        if errors:
            if errors != last_errors:  # once per distinct error, not per save
                for line in errors:
                    log.error("not reloading, the workers keep the old code: %s", line)
            last_errors = errors
            continue
        last_errors = []
        names = ", ".join(sorted(os.path.relpath(p) for p in paths))
        log.info("%s changed; reloading", names)
        while supervisor.reloading:  # a reload under way: this edit goes next
            await trio.sleep(0.05)
        if supervisor.stopping:
            return
        await supervisor.replacer.reload()
