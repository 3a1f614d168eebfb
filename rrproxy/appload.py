"""Finding the user's app from "module:attribute" (run in the worker, never the front:
the front stays free of user code, and every worker re-imports on reload)."""

from __future__ import annotations

import importlib
import inspect
import os
import sys
from collections.abc import Callable
from typing import Any


class AppSpecError(ValueError):
    """APP is not of the form module:attribute (checked by the CLI, no import)."""


class AppLoadError(Exception):
    """The module cannot be imported or the attribute is missing / not callable."""


def parse_app_spec(spec: str) -> tuple[str, str]:
    """(module, attribute) of "module:attribute", both dotted Python names;
    AppSpecError otherwise. Nothing is imported."""
    module, sep, attr = spec.partition(":")
    if not sep or not module or not attr or ":" in attr:
        raise AppSpecError(f"APP must be of the form module:attribute, got {spec!r}")
    for part in [*module.split("."), *attr.split(".")]:
        if not part.isidentifier():
            raise AppSpecError(f"APP must be of the form module:attribute, got {spec!r}")
    return module, attr


def load_app(spec: str, app_dir: str = ".") -> Callable[..., Any]:
    """Import and return the callable named by `spec`, or raise AppLoadError with a
    one-line reason."""
    module_name, attr = parse_app_spec(spec)
    path = os.path.abspath(app_dir)
    if path not in sys.path:
        # Like uvicorn's --app-dir: `workers.hello:handler` is found from the
        # directory rrproxy was started in.
        sys.path.insert(0, path)
    try:
        module = importlib.import_module(module_name)
    except ModuleNotFoundError as exc:
        if exc.name and (module_name == exc.name or module_name.startswith(exc.name + ".")):
            raise AppLoadError(
                f"cannot import module {module_name!r}: no module named {exc.name!r} "
                f"(looked in {path} and the installed packages)"
            ) from None
        raise AppLoadError(
            f"cannot import module {module_name!r}: {type(exc).__name__}: {exc}"
        ) from exc
    except BaseException as exc:  # the module's own code failed: say where
        if isinstance(exc, KeyboardInterrupt):
            raise
        where = ""
        tb = exc.__traceback__
        while tb is not None and tb.tb_next is not None:
            tb = tb.tb_next
        if isinstance(exc, SyntaxError) and exc.filename:
            where = f" ({exc.filename}, line {exc.lineno})"
        elif tb is not None:
            where = f" ({tb.tb_frame.f_code.co_filename}, line {tb.tb_lineno})"
        raise AppLoadError(
            f"cannot import module {module_name!r}: {type(exc).__name__}: {exc}{where}"
        ) from exc
    obj: object = module
    for part in attr.split("."):
        try:
            obj = getattr(obj, part)
        except AttributeError:
            raise AppLoadError(f"module {module_name!r} has no attribute {attr!r}") from None
    if not callable(obj):
        raise AppLoadError(f"{spec!r} is not callable (it is {type(obj).__name__})")
    return obj


def is_coroutine_callable(obj: Any) -> bool:
    """Whether calling `obj` gives a coroutine: an async function, or an object whose
    `__call__` is one (an async handler, or an async --factory)."""
    if inspect.iscoroutinefunction(obj):
        return True
    call = getattr(obj, "__call__", None)  # noqa: B004
    return call is not None and inspect.iscoroutinefunction(call)


def _call_target(obj: Any) -> Any:
    """What runs when `obj` is called: itself for a function, method or class (a
    class's signature is its constructor's; `cls.__call__` would be what its
    instances do, with `self` counted), else its `__call__`."""
    if inspect.isfunction(obj) or inspect.ismethod(obj) or inspect.isclass(obj):
        return obj
    return obj.__call__ if callable(obj) else None


def _required_positional(target: Any) -> int | None:
    """How many positional parameters `target` requires (None: cannot tell; *args
    counts as taking any number)."""
    try:
        parameters = list(inspect.signature(target).parameters.values())
    except (TypeError, ValueError):
        return None
    if any(p.kind is p.VAR_POSITIONAL for p in parameters):
        return None
    return sum(
        1
        for p in parameters
        if p.kind in (p.POSITIONAL_ONLY, p.POSITIONAL_OR_KEYWORD) and p.default is p.empty
    )


def is_asgi3(obj: Any) -> bool:
    """An ASGI 3 app: `async def app(scope, receive, send)`, or an object whose
    `__call__` is one (Starlette, FastAPI, most middleware)."""
    target = _call_target(obj)
    if target is None or not inspect.iscoroutinefunction(target):
        return False
    return _required_positional(target) == 3


def is_wsgi(obj: Any) -> bool:
    """A WSGI app: a plain callable taking `(environ, start_response)`, or an object
    whose `__call__` does (Flask, Django's WSGIHandler, Pyramid's Router)."""
    target = _call_target(obj)
    if target is None or inspect.iscoroutinefunction(target):
        return False
    return _required_positional(target) == 2


def is_native(obj: Any) -> bool:
    """A native handler: `(async) def handler(request)`."""
    target = _call_target(obj)
    return target is not None and _required_positional(target) == 1


class UnknownInterface(AppLoadError):
    """The app is none of the shapes rrproxy serves."""


def detect_interface(obj: Any, requested: str) -> str:
    """ "asgi", "wsgi" or "native": `requested` unless it is "auto", else told from
    how `obj` is called (a signature that cannot be read counts as native).
    UnknownInterface if no shape fits."""
    if requested != "auto":
        return requested
    if is_asgi3(obj):
        return "asgi"
    if is_wsgi(obj):
        return "wsgi"
    if is_native(obj) or _required_positional(_call_target(obj)) is None:
        return "native"
    target = _call_target(obj)
    kind = "an async callable" if inspect.iscoroutinefunction(target) else "a callable"
    count = _required_positional(target)
    raise UnknownInterface(
        f"cannot tell what kind of app {obj!r} is: {kind} taking {count} "
        "positional arguments (a native handler takes 1 (request), a WSGI app 2 (environ, "
        "start_response), an ASGI 3 app 3 and is async); use --interface, or --factory if "
        "it builds the app"
    )
