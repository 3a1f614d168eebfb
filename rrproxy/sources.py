"""One configuration from four sources, as gunicorn and uvicorn users expect:
command line > environment (RRPROXY_<NAME>, WEB_CONCURRENCY) > file (--config, or
[tool.rrproxy] in the app's pyproject.toml) > default. Every value remembers where it
came from, for `rrproxy --print-config`; a bad one names its file and line."""

from __future__ import annotations

import argparse
import os
import re
import sys
import tomllib
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, NoReturn

from . import __version__
from .config import ConfigError
from .options import BY_NAME, CLI_ONLY, OPTIONS, Option, coerce, environ_value


class _Parser(argparse.ArgumentParser):
    def error(self, message: str) -> NoReturn:
        # One clear line, not argparse's usage dump.
        self.exit(2, f"rrproxy: error: {message}\n")


def build_parser() -> argparse.ArgumentParser:
    """The command line's parser, from OPTIONS. No flag has a default
    (argparse.SUPPRESS): what was not given is absent, and the other sources fill it."""
    parser = _Parser(
        prog="rrproxy",
        description=(
            "Serve a Python web app (native handler, ASGI or WSGI) from N worker processes "
            "behind one trio front process that owns the port and hands each connection to "
            "a worker: Node.js cluster for Python. Every option can also come from "
            "$RRPROXY_<OPTION> or a config file (see --config, --print-config)."
        ),
        allow_abbrev=False,
        argument_default=argparse.SUPPRESS,
    )
    groups: dict[str, Any] = {}
    for option in OPTIONS:
        group = groups.get(option.group)
        if group is None:
            group = groups[option.group] = parser.add_argument_group(option.group)
        default = option.resolved_default()
        shown = "" if default in (None, (), "") or option.switch else f" (default: {default})"
        if option.name == "uds_mode":
            shown = f" (default: {default:o})"
        kwargs: dict[str, Any] = {"help": option.help + shown}
        if option.name == "app":
            group.add_argument("app", metavar="APP", nargs="?", **kwargs)
            continue
        if option.switch:
            kwargs["action"] = "store_true"
        else:
            kwargs["metavar"] = option.metavar
            if option.choices:
                kwargs["choices"] = option.choices
            if option.multiple:
                kwargs["action"] = "append"
        group.add_argument(*option.flags, dest=option.name, **kwargs)
    parser.add_argument("--version", action="version", version=f"rrproxy {__version__}")
    return parser


@dataclass
class Settings:
    """Every option's value by name, and where each one came from."""

    values: dict[str, Any] = field(default_factory=dict)
    #: name -> "command line", "environment ($X)", "FILE, line N", or "default".
    origins: dict[str, str] = field(default_factory=dict)

    def __getitem__(self, name: str) -> Any:
        return self.values[name]


#: One part of a dotted TOML key or table name: bare, "basic" or 'literal'.
_PART = r"""(?:[A-Za-z0-9_-]+|"[^"\\]*"|'[^']*')"""
_DOTTED = rf"{_PART}(?:\s*\.\s*{_PART})*"
_TABLE = re.compile(rf"\s*\[\s*({_DOTTED})\s*\]\s*(?:#.*)?$")
_ARRAY_TABLE = re.compile(rf"\s*\[\[\s*({_DOTTED})\s*\]\]\s*(?:#.*)?$")
_KEY = re.compile(rf"\s*({_DOTTED})\s*=(.*)")


def _parts(dotted: str) -> tuple[str, ...]:
    return tuple(part.strip("\"'") for part in re.findall(_PART, dotted))


def _line_of(text: str, table: tuple[str, ...], key: str) -> int | None:
    """The line where `key` of the table at path `table` (("tool", "rrproxy"), or ()
    for a whole rrproxy.toml) is set, for error messages; tomllib keeps no positions.
    Another table's key of the same name (pytest's `timeout`) is not it. A line
    scanner, not a TOML parser: it follows table headers and dotted keys and skips
    multi-line strings, which covers what people write."""
    wanted = (*table, key)
    current: tuple[str, ...] = ()
    inline: int | None = None  # the line of an inline table holding the key
    closer: str | None = None  # inside a multi-line string ending with this
    for number, line in enumerate(text.splitlines(), 1):
        if closer is not None:
            if closer in line:
                closer = None
            continue
        if header := _ARRAY_TABLE.match(line) or _TABLE.match(line):
            current = _parts(header.group(1))
            continue
        match = _KEY.match(line)
        if match is None:
            continue
        path = current + _parts(match.group(1))
        if path == wanted:
            return number
        if inline is None and wanted[: len(path)] == path:
            inline = number  # rrproxy = { timeout = 5 } under [tool]
        value = match.group(2)
        for quotes in ('"""', "'''"):
            if value.count(quotes) % 2:
                closer = quotes
    return inline


def _file_options(
    path: Path, table: dict[str, Any], text: str, table_path: tuple[str, ...]
) -> dict[str, tuple[Any, str]]:
    found: dict[str, tuple[Any, str]] = {}
    for key, raw in table.items():
        name = key.replace("-", "_")
        line = _line_of(text, table_path, key)
        where = f"{path}, line {line}" if line else str(path)
        option = BY_NAME.get(name)
        if option is None or name in CLI_ONLY:
            raise ConfigError(f"{where}: unknown option {key!r}")
        try:
            found[name] = (coerce(option, raw), where)
        except ConfigError as exc:
            raise ConfigError(f"{where}: {key}: {exc}") from None
    return found


def read_file(path: Path, explicit: bool) -> dict[str, tuple[Any, str]]:
    """The options a TOML file sets (a pyproject.toml's [tool.rrproxy] only), each
    with where it is; a file that cannot be read gives none unless `explicit`."""
    try:
        text = path.read_text()
    except OSError as exc:
        if explicit:
            raise ConfigError(f"cannot read --config {path}: {exc.strerror}") from None
        return {}
    try:
        data = tomllib.loads(text)
    except tomllib.TOMLDecodeError as exc:
        raise ConfigError(f"{path}: not valid TOML: {exc}") from None
    if path.name == "pyproject.toml":
        table = data.get("tool", {}).get("rrproxy")
        if table is None:
            return {}
        if not isinstance(table, dict):
            raise ConfigError(f"{path}: [tool.rrproxy] must be a table")
        return _file_options(path, table, text, ("tool", "rrproxy"))
    return _file_options(path, data, text, ())


def resolve(
    argv: list[str], environ: dict[str, str] | None = None
) -> tuple[Settings, argparse.ArgumentParser]:
    """Settings from every source; ConfigError (one line) for anything wrong."""
    environ = dict(os.environ) if environ is None else environ
    parser = build_parser()
    given = vars(parser.parse_args(argv))
    settings = Settings()
    for option in OPTIONS:
        settings.values[option.name] = option.resolved_default()
        settings.origins[option.name] = "default"
    # The file: --config, else $RRPROXY_CONFIG, else [tool.rrproxy] in the app's
    # pyproject.toml.
    config_path = given.get("config") or environ.get("RRPROXY_CONFIG")
    app_dir = given.get("app_dir") or environ.get("RRPROXY_APP_DIR") or "."
    if config_path:
        from_file = read_file(Path(config_path), explicit=True)
    else:
        from_file = read_file(Path(app_dir).resolve() / "pyproject.toml", explicit=False)
    for name, (value, where) in from_file.items():
        settings.values[name] = value
        settings.origins[name] = where
    for option in OPTIONS:
        if option.name in CLI_ONLY:
            continue
        text = environ_value(option, environ)
        if text is None:
            continue
        variable = option.env if option.env in environ else "WEB_CONCURRENCY"
        try:
            settings.values[option.name] = coerce(option, text)
        except ConfigError as exc:
            raise ConfigError(f"${variable}: {exc}") from None
        settings.origins[option.name] = f"environment (${variable})"
    for name, value in given.items():
        option = BY_NAME[name]
        try:
            if option.multiple:
                value = tuple(option.parse(v) for v in value)
            elif not option.switch and isinstance(value, str):
                value = coerce(option, value)
        except ConfigError as exc:
            flag = option.flags[-1]
            raise ConfigError(f"{flag}: {exc}") from None
        settings.values[name] = value
        settings.origins[name] = "command line"
    return settings, parser


def print_config(settings: Settings, out: Any = sys.stdout) -> None:
    """--print-config: a line per option with its value (secrets masked) and its
    origin."""
    width = max(len(o.name) for o in OPTIONS)
    for option in OPTIONS:
        if option.name in CLI_ONLY:
            continue
        value = settings.values[option.name]
        if option.secret and value:
            value = "****"
        elif option.name == "uds_mode":
            value = f"{value:o}"
        out.write(f"{option.name.replace('_', '-'):<{width}}  {value!r:<40}  "
                  f"{settings.origins[option.name]}\n")  # fmt: skip


__all__ = ["Option", "Settings", "build_parser", "print_config", "resolve"]
