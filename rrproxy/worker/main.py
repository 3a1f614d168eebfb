"""Worker process entry: `python -m rrproxy.worker --fd N --slot K`.

A fresh interpreter (never a fork of the trio front). Before any event loop runs it
says Hello over its channel, receives its configuration and imports the app, which
decides the loop: `--loop auto` runs native handlers on trio, and ASGI and WSGI apps
on asyncio (uvloop when installed, as uvicorn does). Then, on that loop, it reports
Ready and serves connections handed over by the front (or accepted from the shared
socket) until the front says Stop or goes away.
"""

from __future__ import annotations

import argparse
import gc
import importlib.util
import os
import random
import signal
import socket
import sys
from collections.abc import Callable
from typing import Any

from .. import cluster
from ..appload import AppLoadError, detect_interface, is_coroutine_callable, load_app
from ..config import WorkerConfig
from ..fdlimit import raise_fd_limit
from ..ipc.channel import ChannelClosed, WorkerChannel
from ..ipc.messages import PROTOCOL_VERSION, Configure, Failed, Hello, Stop
from ..listeners import BindError, bind_listener, parse_bind
from ..logs import setup_logging
from .backend import Backend
from .worker import EXIT_BOOT_ERROR

#: How long a new worker waits for its configuration.
CONFIGURE_TIMEOUT = 60.0


def choose_backend(loop: str, interface: str) -> Backend:
    """The event loop for this app: ValueError (one line for the user) if the one
    asked for cannot run here."""
    if loop == "auto":
        # WSGI on asyncio too: its thread hand-offs cost less there (Flask hello, 2
        # workers x 4 threads: 4.5k req/s on uvloop against 2.7k on trio).
        if interface == "native":
            loop = "trio"
        else:
            loop = "uvloop" if importlib.util.find_spec("uvloop") is not None else "asyncio"
    if loop == "trio":
        from .trio import BACKEND

        return BACKEND
    from .asyncio import make_backend

    try:
        return make_backend(loop)
    except ImportError:
        raise ValueError(
            "--loop uvloop needs uvloop: pip install 'rrproxy[uvloop]' (or use --loop asyncio)"
        ) from None


def _boot(sock: socket.socket, slot: int) -> int:
    channel = WorkerChannel(sock)
    channel.send_blocking(Hello(PROTOCOL_VERSION, os.getpid()))
    received = channel.receive_blocking(CONFIGURE_TIMEOUT)
    message, fds = received if received is not None else (None, [])
    if isinstance(message, Stop):
        return 0  # stopped before it started (rrproxy is shutting down)
    if not isinstance(message, Configure):
        print(f"rrproxy worker {slot}: expected Configure, got {message!r}", file=sys.stderr)
        return EXIT_BOOT_ERROR
    config = WorkerConfig.from_dict(message.config)
    setup_logging(
        config.log_level,
        {"worker": message.worker_id, "pid": os.getpid()},
        config.log_format,
        config.log_file,
        config.access_log,
        config.log_config,
    )
    cluster.worker_id = message.worker_id
    cluster.worker_count = message.worker_count
    # Shared listening sockets (none; unix or inherited ones under reuseport), then
    # under reuseport our own socket in each TCP port's SO_REUSEPORT group.
    listeners = [socket.socket(fileno=fd) for fd in fds]
    for text in config.reuseport_binds:
        try:
            listeners.append(bind_listener(parse_bind(text), config.backlog, reuseport=True))
        except BindError as exc:
            channel.send_blocking(Failed("bind", f"{exc} (with SO_REUSEPORT)"))
            return EXIT_BOOT_ERROR
    try:
        handler = load_app(config.app, config.app_dir)
        async_factory = config.factory and is_coroutine_callable(handler)
        if async_factory:
            # An async factory builds the app on the loop that will serve it (its
            # connection pools belong to that loop): in _serve. It builds an ASGI app.
            interface = "asgi" if config.interface == "auto" else config.interface
        else:
            if config.factory:
                handler = call_factory(handler, config.app)
            interface = detect_interface(handler, config.interface)
        backend = choose_backend(config.loop, interface)
    except (AppLoadError, ValueError) as exc:
        channel.send_blocking(Failed("app", str(exc)))
        return EXIT_BOOT_ERROR
    _set_title(f"rrproxy: worker {message.worker_id} {config.app}")
    # Everything imported so far (the loop, h11, the app) lives as long as the worker:
    # move it out of the collector's sight, so full collections stay short.
    gc.collect()
    gc.freeze()
    if os.environ.get("RRPROXY_EXPERIMENT_NOGC"):
        gc.disable()
    return backend.run(
        _serve,
        backend,
        channel,
        config,
        message.worker_id,
        handler,
        interface,
        listeners,
        async_factory,
    )


async def _serve(
    backend: Backend,
    channel: WorkerChannel,
    config: WorkerConfig,
    worker_id: int,
    handler: Callable[..., Any],
    interface: str,
    listeners: list[socket.socket],
    async_factory: bool = False,
) -> int:
    from .asgi import ASGIAdapter
    from .lifespan import Lifespan
    from .server import Adapter, WorkerServer
    from .worker import Worker

    if async_factory:
        try:
            handler = await handler()
            if detect_interface(handler, "auto") != interface:
                raise AppLoadError(
                    f"--factory: {config.app}() returned {handler!r}, not an ASGI app"
                )
        except Exception as exc:
            what = str(exc) if isinstance(exc, AppLoadError) else f"{type(exc).__name__}: {exc}"
            if not isinstance(exc, AppLoadError):
                what = f"--factory: {config.app}() raised {what}"
            channel.send_blocking(Failed("app", what))
            return EXIT_BOOT_ERROR
    channel.use_backend(backend)
    retire_after = 0
    if config.max_requests > 0:
        retire_after = config.max_requests + random.randint(0, config.max_requests_jitter)
    adapter: Adapter | None = None
    if interface == "asgi":
        adapter = ASGIAdapter(handler)
    elif interface == "wsgi":
        from .wsgi import WSGIAdapter

        adapter = WSGIAdapter(handler, backend, config.threads)
    server = WorkerServer(
        config,
        worker_id,
        handler,
        is_coroutine_callable(handler),
        backend,
        adapter,
        retire_after,
    )
    lifespan = None
    if interface == "asgi":
        lifespan = Lifespan(handler, config.lifespan, server.asgi_state, backend)
    return await Worker(channel, server, listeners, lifespan).run()


def call_factory(factory: object, spec: str) -> Callable[..., Any]:
    """--factory: the attribute builds the app (uvicorn's --factory); it may be async."""
    import asyncio
    import inspect

    if not callable(factory):
        raise AppLoadError(f"--factory: {spec!r} is not callable")
    try:
        app: object = factory()
        if inspect.isawaitable(app):
            app = asyncio.run(_awaited(app))
    except Exception as exc:
        raise AppLoadError(f"--factory: {spec}() raised {type(exc).__name__}: {exc}") from exc
    if not callable(app):
        raise AppLoadError(f"--factory: {spec}() returned {type(app).__name__}, not an app")
    return app


async def _awaited(awaitable: Any) -> Any:
    return await awaitable


def _set_title(title: str) -> None:
    try:
        import setproctitle
    except ImportError:
        return
    setproctitle.setproctitle(title)


def main(argv: list[str] | None = None) -> None:
    """The worker process: boot over the channel fd the front passed, serve, and exit
    with the worker's status."""
    parser = argparse.ArgumentParser(prog="rrproxy-worker")
    parser.add_argument("--fd", type=int, required=True)
    parser.add_argument("--slot", type=int, required=True)
    args = parser.parse_args(argv)
    # Ctrl-C reaches the whole process group; the front decides what happens.
    signal.signal(signal.SIGINT, signal.SIG_IGN)
    raise_fd_limit()
    # The channel came through pass_fds, which makes it inheritable: a handler's
    # os.system() child must not hold it (the front would never see our EOF).
    os.set_inheritable(args.fd, False)
    sock = socket.socket(fileno=args.fd)
    try:
        code = _boot(sock, args.slot)
    except ChannelClosed:
        code = EXIT_BOOT_ERROR  # the front went away before we were configured
    sys.exit(code)
