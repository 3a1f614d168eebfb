"""One log stream for the front and every worker: each line says who wrote it.

Workers inherit the front's stderr, so their lines interleave with the front's in
one stream; with --log-file every process appends to the same file (O_APPEND keeps
lines whole) and reopens it on SIGUSR1 (the front forwards it), for logrotate.
"""

from __future__ import annotations

import json
import logging
import sys
import time

LEVELS = ("critical", "error", "warning", "info", "debug")
FORMATS = ("text", "json")

#: Fields an access-log record carries (set through `extra=`), copied into JSON lines.
_ACCESS_FIELDS = ("client", "method", "path", "status", "bytes", "duration_ms", "worker")


class JSONFormatter(logging.Formatter):
    """--log-format json: a record as one JSON object, with `source` (who wrote it)
    merged in."""

    def __init__(self, source: dict[str, object]) -> None:
        super().__init__()
        self.source = source

    def format(self, record: logging.LogRecord) -> str:
        """One line: time (UTC, ms), level, logger, the source, the message, the
        access-log fields when the record has them, and any traceback."""
        data: dict[str, object] = {
            "time": time.strftime("%Y-%m-%dT%H:%M:%S", time.gmtime(record.created))
            + f".{int(record.msecs):03d}Z",
            "level": record.levelname.lower(),
            "logger": record.name,
            **self.source,
            "message": record.getMessage(),
        }
        for field in _ACCESS_FIELDS:
            if hasattr(record, field):
                data[field] = getattr(record, field)
        if record.exc_info:
            data["traceback"] = self.formatException(record.exc_info)
        return json.dumps(data, default=str)


def format_line(line: str, level: str = "info", as_json: bool = False) -> str:
    """rrproxy's own console lines ("rrproxy: listening on ..."), as text or JSON."""
    if not as_json:
        return line
    now = time.time()
    return json.dumps(
        {
            "time": time.strftime("%Y-%m-%dT%H:%M:%S", time.gmtime(now))
            + f".{int(now % 1 * 1000):03d}Z",
            "level": level,
            "logger": "rrproxy",
            "message": line.removeprefix("rrproxy: ").removeprefix("error: "),
        }
    )


def _formatter(fmt: str, source: dict[str, object]) -> logging.Formatter:
    if fmt == "json":
        return JSONFormatter(source)
    if "worker" in source:
        label = f"worker {source['worker']} pid {source['pid']}"
    else:
        label = f"front pid {source['pid']}"
    return logging.Formatter(
        f"%(asctime)s %(levelname)s [{label}] %(name)s: %(message)s",
        datefmt="%Y-%m-%d %H:%M:%S",
    )


_state: dict[str, object] = {}


def setup_logging(
    level: str,
    source: dict[str, object],
    fmt: str = "text",
    log_file: str | None = None,
    access_log: bool = False,
    log_config: str | None = None,
) -> None:
    """`source` says who writes: {"pid": 1234} for the front, {"worker": 2, "pid": 1240}
    for a worker. `log_config` (--log-config) hands the whole setup to the user's file,
    as uvicorn does: a dictConfig in .json/.yaml, or a fileConfig .ini."""
    _state.update(level=level, source=source, fmt=fmt, log_file=log_file)
    access = logging.getLogger("rrproxy.access")
    access.disabled = not access_log
    if access_log:
        access.setLevel(logging.INFO)
    if log_config:
        apply_log_config(log_config)
        return
    if log_file:
        handler: logging.Handler = logging.FileHandler(log_file, mode="a", encoding="utf-8")
    else:
        handler = logging.StreamHandler(sys.stderr)
    handler.setFormatter(_formatter(fmt, source))
    root = logging.getLogger()
    for old in root.handlers:
        old.close()
    root.handlers[:] = [handler]
    root.setLevel(level.upper())


def apply_log_config(path: str) -> None:
    """ValueError (one line) if the file cannot be used."""
    import logging.config

    try:
        if path.endswith((".json", ".yaml", ".yml")):
            with open(path, encoding="utf-8") as file:
                if path.endswith(".json"):
                    config = json.load(file)
                else:
                    import yaml

                    config = yaml.safe_load(file)
            logging.config.dictConfig(config)
        else:
            logging.config.fileConfig(path, disable_existing_loggers=False)
    except (OSError, ValueError, KeyError, TypeError, ImportError) as exc:
        raise ValueError(f"--log-config {path}: {type(exc).__name__}: {exc}") from None


def reopen_log_file() -> bool:
    """Reopen --log-file (after logrotate moved it). False if logging to stderr."""
    log_file = _state.get("log_file")
    if not log_file:
        return False
    for handler in logging.getLogger().handlers:
        if isinstance(handler, logging.FileHandler):
            handler.acquire()
            try:
                handler.close()
                handler.stream = handler._open()
            finally:
                handler.release()
    return True
