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
from typing import Any

from .. import cluster
from ..appload import AppLoadError, detect_interface, is_coroutine_callable, load_app
from ..config import WorkerConfig
from ..fdlimit import raise_fd_limit
from ..ipc.channel import ChannelClosed, WorkerChannel
from ..ipc.messages import PROTOCOL_VERSION, Configure, Failed, Hello, Stop
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
    )
    cluster.worker_id = message.worker_id
    cluster.worker_count = message.worker_count
    listener = socket.socket(fileno=fds[0]) if fds else None
    if config.policy == "reuseport":
        try:
            listener = _bind_reuseport(config)
        except OSError as exc:
            where = f"{config.bind_host}:{config.bind_port}"
            channel.send_blocking(Failed("bind", f"cannot bind {where} with SO_REUSEPORT: {exc}"))
            return EXIT_BOOT_ERROR
    try:
        handler = load_app(config.app, config.app_dir)
        interface = detect_interface(handler, config.interface)
        backend = choose_backend(config.loop, interface)
    except (AppLoadError, ValueError) as exc:
        channel.send_blocking(Failed("app", str(exc)))
        return EXIT_BOOT_ERROR
    # Everything imported so far (the loop, h11, the app) lives as long as the worker:
    # move it out of the collector's sight, so full collections stay short.
    gc.collect()
    gc.freeze()
    if os.environ.get("RRPROXY_EXPERIMENT_NOGC"):
        gc.disable()
    return backend.run(
        _serve, backend, channel, config, message.worker_id, handler, interface, listener
    )


async def _serve(
    backend: Backend,
    channel: WorkerChannel,
    config: WorkerConfig,
    worker_id: int,
    handler: object,
    interface: str,
    listener: socket.socket | None,
) -> int:
    from .asgi import ASGIAdapter, Lifespan
    from .server import WorkerServer
    from .worker import Worker

    channel.use_backend(backend)
    retire_after = 0
    if config.max_requests > 0:
        retire_after = config.max_requests + random.randint(0, config.max_requests_jitter)
    adapter: Any = None
    if interface == "asgi":
        adapter = ASGIAdapter(handler)  # type: ignore[arg-type]
    elif interface == "wsgi":
        from .wsgi import WSGIAdapter

        adapter = WSGIAdapter(handler, backend, config.threads)  # type: ignore[arg-type]
    server = WorkerServer(
        config,
        worker_id,
        handler,  # type: ignore[arg-type]
        is_coroutine_callable(handler),
        backend,
        adapter,
        retire_after,
    )
    lifespan = None
    if interface == "asgi":
        lifespan = Lifespan(handler, config.lifespan, server.asgi_state, backend)  # type: ignore[arg-type]
    return await Worker(channel, server, listener, lifespan).run()


def _bind_reuseport(config: WorkerConfig) -> socket.socket:
    """This worker's own socket in the port's SO_REUSEPORT group: the kernel hashes
    each new connection to one of the group's listening sockets."""
    family = socket.AF_INET6 if ":" in config.bind_host else socket.AF_INET
    sock = socket.socket(family, socket.SOCK_STREAM)
    try:
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEPORT, 1)
        if family == socket.AF_INET6:
            sock.setsockopt(socket.IPPROTO_IPV6, socket.IPV6_V6ONLY, 1)
        sock.bind((config.bind_host, config.bind_port))
        sock.listen(config.backlog)
    except OSError:
        sock.close()
        raise
    return sock


def main(argv: list[str] | None = None) -> None:
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
