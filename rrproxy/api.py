"""Starting rrproxy from Python, as `uvicorn.run` does::

    import rrproxy

    if __name__ == "__main__":
        rrproxy.run("app:app", workers=4, port=8000)

Every command-line option is a keyword argument (its long name, dashes as
underscores: `max_body_size="2m"`, `bind=["unix:/run/app.sock"]`). Only what is passed
counts: unlike the command line, the API reads no environment variables and no config
file, so a script means the same wherever it runs.

The workers are fresh interpreters, so the app travels as "module:attribute". An app
object is accepted too, and turned into that: it must be a module-level name of an
importable module (a script run as __main__ is imported by its file name, which is
why the call sits under `if __name__ == "__main__"`).
"""

from __future__ import annotations

import os
import sys
from typing import Any

from .config import Config as _ResolvedConfig
from .config import ConfigError
from .options import BY_NAME, CLI_ONLY, OPTIONS, Option, coerce
from .sources import Settings


class Config:
    """A validated configuration: `Config("app:app", workers=4)`. Raises ConfigError
    (a ValueError) for an unknown option or a bad value, naming it."""

    def __init__(self, app: object, **options: Any) -> None:
        settings = Settings()
        option: Option | None  # each option, then the one each keyword names (or None)
        for option in OPTIONS:
            settings.values[option.name] = option.resolved_default()
            settings.origins[option.name] = "default"
        for name, value in options.items():
            option = BY_NAME.get(name)
            if option is None or name in CLI_ONLY or name == "app":
                raise ConfigError(f"unknown option {name!r}")
            if option.switch and not isinstance(value, bool):
                raise ConfigError(f"{name}: expected True or False, got {value!r}")
            if option.multiple and isinstance(value, str):
                value = [value]
            try:
                settings.values[name] = coerce(option, value)
            except ConfigError as exc:
                raise ConfigError(f"{name}: {exc}") from None
            settings.origins[name] = "rrproxy.run()"
        spec, app_dir = app_spec_of(app)
        settings.values["app"] = spec
        if app_dir is not None and "app_dir" not in options:
            settings.values["app_dir"] = app_dir
        from .cli import build_config

        self.settings = settings
        self.resolved: _ResolvedConfig = build_config(settings)

    def __getattr__(self, name: str) -> Any:
        # config.workers, config.binds, config.worker.app ... (the resolved settings)
        if name in ("settings", "resolved"):
            raise AttributeError(name)
        if name in self.settings.values:
            return self.settings.values[name]
        return getattr(self.resolved, name)

    def __repr__(self) -> str:
        return f"rrproxy.Config({self.settings.values['app']!r}, binds={self.resolved.binds})"


def app_spec_of(app: object) -> tuple[str, str | None]:
    """("module:attribute", the directory to import it from, or None)."""
    if isinstance(app, str):
        return app, None
    module_name = getattr(app, "__module__", None)
    module = sys.modules.get(module_name or "")
    if module is None:
        raise ConfigError(f"cannot tell where {app!r} is defined; pass it as 'module:attribute'")
    names = [name for name, value in vars(module).items() if value is app]
    if not names:
        raise ConfigError(
            f"{app!r} is not a module-level name of {module_name}; workers import the app "
            "afresh, so pass it as 'module:attribute'"
        )
    if module_name != "__main__":
        return f"{module_name}:{names[0]}", None
    path = getattr(module, "__file__", None)
    if not path:
        raise ConfigError("an app defined in an interactive session cannot be imported by "
                          "workers; put it in a module")  # fmt: skip
    path = os.path.abspath(path)
    stem = os.path.splitext(os.path.basename(path))[0]
    return f"{stem}:{names[0]}", os.path.dirname(path)


def run(app: object, **options: Any) -> int:
    """Serve `app` until SIGINT/SIGTERM; the exit status (0: stopped cleanly). `app`
    is "module:attribute", an app object, or a Config (then no options). Runs in the
    calling process, which must be the main thread (it handles the signals)."""
    config = app if isinstance(app, Config) else Config(app, **options)
    if isinstance(app, Config) and options:
        raise ConfigError("pass options to Config(), or an app and options to run()")
    from .cli import check_environment
    from .fdlimit import raise_fd_limit
    from .logs import setup_logging

    resolved = config.resolved
    check_environment(resolved)
    worker = resolved.worker
    setup_logging(
        worker.log_level,
        {"pid": os.getpid()},
        worker.log_format,
        worker.log_file,
        worker.access_log,
        worker.log_config,
    )
    raise_fd_limit()
    from .front.main import run as run_front

    return run_front(resolved)
