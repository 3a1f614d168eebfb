"""Finding the app: APP specs, importing modules written to tmp_path (and the errors a
user sees when that fails), and telling native handlers, ASGI 3 and WSGI apps apart."""

from __future__ import annotations

import functools
import sys
import textwrap
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from .appload import (
    AppLoadError,
    AppSpecError,
    UnknownInterface,
    detect_interface,
    is_coroutine_callable,
    load_app,
    parse_app_spec,
)


@pytest.fixture
def modules(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> Iterator[Path]:
    """A directory on sys.path to write modules into; whatever the test imports from
    it is forgotten afterwards (so every test imports its own files afresh)."""
    monkeypatch.setattr(sys, "path", list(sys.path))
    monkeypatch.syspath_prepend(str(tmp_path))
    before = set(sys.modules)
    yield tmp_path
    for name in set(sys.modules) - before:
        del sys.modules[name]


def write(directory: Path, name: str, source: str) -> Path:
    path = directory / name
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(textwrap.dedent(source))
    return path


# --- parse_app_spec ------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("spec", "parts"),
    [
        ("app:handler", ("app", "handler")),
        ("workers.hello:handler", ("workers.hello", "handler")),
        ("pkg.mod:obj.attr", ("pkg.mod", "obj.attr")),
        ("_private:_x", ("_private", "_x")),
        ("caf\u00e9:h", ("caf\u00e9", "h")),
    ],
)
def test_good_specs(spec: str, parts: tuple[str, str]) -> None:
    assert parse_app_spec(spec) == parts


@pytest.mark.parametrize(
    "spec",
    [
        "",
        "app",
        ":handler",
        "app:",
        "app:handler:extra",
        "my app:handler",
        "1app:handler",
        "app.:handler",
        "app:handler.",
        "my-app:handler",
        "app:create_app()",
        "app/main:app",
    ],
)
def test_bad_specs_say_what_is_expected(spec: str) -> None:
    with pytest.raises(AppSpecError) as caught:
        parse_app_spec(spec)
    assert str(caught.value) == f"APP must be of the form module:attribute, got {spec!r}"
    assert isinstance(caught.value, ValueError)


# --- load_app ------------------------------------------------------------------------------------


def test_loads_a_module_attribute(modules: Path) -> None:
    write(modules, "rrt_plain.py", "async def handler(request):\n    return 'hi'\n")
    handler = load_app("rrt_plain:handler")
    assert handler.__name__ == "handler"
    assert handler.__module__ == "rrt_plain"


def test_loads_a_dotted_attribute_from_a_package(modules: Path) -> None:
    write(modules, "rrt_pkg/__init__.py", "")
    write(
        modules,
        "rrt_pkg/web.py",
        """
        class Routes:
            class Api:
                @staticmethod
                def handler(request):
                    return "api"
        """,
    )
    handler = load_app("rrt_pkg.web:Routes.Api.handler")
    assert handler(None) == "api"


def test_app_dir_is_searched_first(
    monkeypatch: pytest.MonkeyPatch, tmp_path: Path, modules: Path
) -> None:
    app_dir = tmp_path / "srv"
    write(app_dir, "rrt_in_app_dir.py", "def handler(request):\n    return 1\n")
    assert load_app("rrt_in_app_dir:handler", str(app_dir))(None) == 1
    assert sys.path[0] == str(app_dir)


def test_a_missing_module_says_where_it_looked(modules: Path) -> None:
    with pytest.raises(AppLoadError) as caught:
        load_app("rrt_nowhere:app", str(modules))
    assert str(caught.value) == (
        "cannot import module 'rrt_nowhere': no module named 'rrt_nowhere' "
        f"(looked in {modules} and the installed packages)"
    )


def test_a_missing_submodule_names_it(modules: Path) -> None:
    write(modules, "rrt_pkg2/__init__.py", "")
    with pytest.raises(AppLoadError, match=r"no module named 'rrt_pkg2\.missing' \(looked in"):
        load_app("rrt_pkg2.missing:app", str(modules))


def test_a_missing_dependency_of_the_app_is_not_blamed_on_the_app(modules: Path) -> None:
    write(modules, "rrt_needs_dep.py", "import rrt_not_installed_dep\napp = 1\n")
    with pytest.raises(AppLoadError) as caught:
        load_app("rrt_needs_dep:app", str(modules))
    assert str(caught.value) == (
        "cannot import module 'rrt_needs_dep': ModuleNotFoundError: "
        "No module named 'rrt_not_installed_dep'"
    )


def test_an_error_while_importing_says_where(modules: Path) -> None:
    path = write(
        modules,
        "rrt_raises.py",
        """
        import os

        raise RuntimeError("no DATABASE_URL")
        """,
    )
    with pytest.raises(AppLoadError) as caught:
        load_app("rrt_raises:app", str(modules))
    assert str(caught.value) == (
        f"cannot import module 'rrt_raises': RuntimeError: no DATABASE_URL ({path}, line 4)"
    )


def test_an_error_deep_in_an_import_names_the_innermost_frame(modules: Path) -> None:
    inner = write(modules, "rrt_inner.py", "def setup():\n    return 1 / 0\n")
    write(modules, "rrt_outer.py", "import rrt_inner\nrrt_inner.setup()\n")
    with pytest.raises(AppLoadError) as caught:
        load_app("rrt_outer:app", str(modules))
    assert str(caught.value).endswith(f"ZeroDivisionError: division by zero ({inner}, line 2)")


def test_a_syntax_error_names_file_and_line(modules: Path) -> None:
    path = write(modules, "rrt_syntax.py", "x = 1\ndef broken(:\n    pass\n")
    with pytest.raises(AppLoadError) as caught:
        load_app("rrt_syntax:app", str(modules))
    message = str(caught.value)
    assert message.startswith("cannot import module 'rrt_syntax': SyntaxError: ")
    assert message.endswith(f"({path}, line 2)")


def test_sys_exit_while_importing_is_an_error_too(modules: Path) -> None:
    write(modules, "rrt_exits.py", "import sys\nsys.exit(3)\n")
    with pytest.raises(AppLoadError, match=r"^cannot import module 'rrt_exits': SystemExit: 3"):
        load_app("rrt_exits:app", str(modules))


def test_keyboard_interrupt_while_importing_is_not_swallowed(modules: Path) -> None:
    write(modules, "rrt_interrupted.py", "raise KeyboardInterrupt\n")
    with pytest.raises(KeyboardInterrupt):
        load_app("rrt_interrupted:app", str(modules))


def test_a_missing_attribute(modules: Path) -> None:
    write(modules, "rrt_attrs.py", "class Box:\n    pass\napp = 1\n")
    with pytest.raises(AppLoadError) as caught:
        load_app("rrt_attrs:handler", str(modules))
    assert str(caught.value) == "module 'rrt_attrs' has no attribute 'handler'"
    with pytest.raises(AppLoadError, match=r"^module 'rrt_attrs' has no attribute 'Box\.app'$"):
        load_app("rrt_attrs:Box.app", str(modules))


def test_an_attribute_that_is_not_callable(modules: Path) -> None:
    write(modules, "rrt_value.py", "app = {'not': 'an app'}\n")
    with pytest.raises(AppLoadError) as caught:
        load_app("rrt_value:app", str(modules))
    assert str(caught.value) == "'rrt_value:app' is not callable (it is dict)"


def test_a_bad_spec_is_refused_before_importing(modules: Path) -> None:
    with pytest.raises(AppSpecError):
        load_app("rrt value:app", str(modules))


# --- detect_interface ------------------------------------------------------------------------


async def native_async(request: Any) -> Any:
    return "hi"


def native_sync(request: Any) -> Any:
    return "hi"


async def asgi3(scope: Any, receive: Any, send: Any) -> None:
    pass


async def asgi3_with_options(scope: Any, receive: Any, send: Any, debug: bool = False) -> None:
    pass


def asgi2(scope: Any) -> Any:
    async def instance(receive: Any, send: Any) -> None:
        pass

    return instance


def wsgi(environ: Any, start_response: Any) -> list[bytes]:
    return [b"hi"]


class Asgi2Class:
    """ASGI 2's class form: constructed with the scope, the instance is awaited."""

    def __init__(self, scope: Any) -> None:
        self.scope = scope

    async def __call__(self, receive: Any, send: Any) -> None:
        pass


class Asgi3App:
    """What Starlette and FastAPI apps, and most ASGI middleware, look like."""

    def __init__(self, app: Any = None) -> None:
        self.app = app

    async def __call__(self, scope: Any, receive: Any, send: Any) -> None:
        pass


class WsgiApp:
    """What a Flask app or Django's WSGIHandler looks like."""

    def __call__(self, environ: Any, start_response: Any) -> list[bytes]:
        return []


class NativeObject:
    async def __call__(self, request: Any) -> Any:
        return "hi"

    def handle(self, request: Any) -> Any:
        return "hi"


def wsgi_wrapper(*args: Any) -> Any:
    return wsgi(*args)


@pytest.mark.parametrize(
    ("app", "interface"),
    [
        (native_async, "native"),
        (native_sync, "native"),
        (lambda request: "hi", "native"),
        (NativeObject(), "native"),
        (NativeObject().handle, "native"),
        (asgi3, "asgi"),
        (asgi3_with_options, "asgi"),
        (Asgi3App(), "asgi"),
        (Asgi3App(Asgi3App()), "asgi"),
        (wsgi, "wsgi"),
        (WsgiApp(), "wsgi"),
        (functools.partial(wsgi, {}), "native"),  # one argument left: a handler's shape
        # ASGI 2 (a callable returning a coroutine) is not supported: by its shape it is
        # a native handler (README: anything that is not ASGI 3 or WSGI).
        (asgi2, "native"),
        # The class form of ASGI 2 likewise: calling the class takes (scope). Judged
        # by its instances' __call__ (self counted), it once passed for ASGI 3.
        (Asgi2Class, "native"),
        # *args cannot be told apart (README: use --interface wsgi).
        (wsgi_wrapper, "native"),
    ],
)
def test_auto_detection(app: Any, interface: str) -> None:
    assert detect_interface(app, "auto") == interface


@pytest.mark.parametrize("requested", ["native", "asgi", "wsgi"])
def test_an_explicit_interface_is_taken_as_given(requested: str) -> None:
    assert detect_interface(asgi3, requested) == requested
    assert detect_interface(native_sync, requested) == requested


async def two_async(a: Any, b: Any) -> None:
    pass


def three_sync(a: Any, b: Any, c: Any) -> None:
    pass


def no_arguments() -> None:
    pass


async def four_async(a: Any, b: Any, c: Any, d: Any) -> None:
    pass


@pytest.mark.parametrize(
    ("app", "shape"),
    [
        (two_async, "an async callable taking 2 positional arguments"),
        (three_sync, "a callable taking 3 positional arguments"),
        (no_arguments, "a callable taking 0 positional arguments"),
        (four_async, "an async callable taking 4 positional arguments"),
    ],
)
def test_an_unknown_shape_is_explained(app: Any, shape: str) -> None:
    with pytest.raises(UnknownInterface) as caught:
        detect_interface(app, "auto")
    message = str(caught.value)
    assert message.startswith(f"cannot tell what kind of app {app!r} is: {shape} ")
    assert "use --interface, or --factory if it builds the app" in message
    assert isinstance(caught.value, AppLoadError)


# --- factories ------------------------------------------------------------------------------


def make_app() -> Any:
    return Asgi3App()


async def make_app_async() -> Any:
    return wsgi


class AsyncFactory:
    async def __call__(self) -> Any:
        return native_async


def test_async_factories_are_told_from_sync_ones() -> None:
    assert not is_coroutine_callable(make_app)
    assert is_coroutine_callable(make_app_async)
    assert is_coroutine_callable(AsyncFactory())
    assert is_coroutine_callable(Asgi3App())  # an async __call__, as the worker sees it
    assert not is_coroutine_callable(WsgiApp())


async def test_what_a_factory_builds_is_detected(modules: Path) -> None:
    write(
        modules,
        "rrt_factory.py",
        """
        def wsgi(environ, start_response):
            return []

        async def create_app():
            return wsgi

        def create_asgi():
            async def app(scope, receive, send):
                pass
            return app
        """,
    )
    factory = load_app("rrt_factory:create_app", str(modules))
    assert is_coroutine_callable(factory)
    # A factory takes no arguments: by itself it is no app at all.
    with pytest.raises(UnknownInterface, match="--factory if it builds the app"):
        detect_interface(factory, "auto")
    assert detect_interface(await factory(), "auto") == "wsgi"
    sync_factory = load_app("rrt_factory:create_asgi", str(modules))
    assert not is_coroutine_callable(sync_factory)
    assert detect_interface(sync_factory(), "auto") == "asgi"
