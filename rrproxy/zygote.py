"""The fork server (zygote): `python -m rrproxy.zygote --fd N [--preload APP]`.

A fresh interpreter that imports what every worker runs: the event loops, h11, wsproto,
rrproxy's worker package, and with --preload the user's app. It then waits, with no
threads and no event loop, and forks a worker whenever the front asks. The workers share
its pages copy-on-write and start in milliseconds instead of importing everything again.
This is Android's zygote and gunicorn's --preload. Each child runs exactly what
`python -m rrproxy.worker` runs, so supervision, restart, reload and the re-hand
guarantee are the same.

The front asks over a SOCK_SEQPACKET socketpair, one JSON object per datagram (see
front/forkserver.py):

    front -> zygote  {"op": "spawn", "id": I, "slot": K, "env": {...}}  + the worker's
                     channel end (SCM_RIGHTS)
    zygote -> front  {"op": "ready", "pid": P}  or  {"op": "failed", "error": "..."}
                     {"op": "spawned", "id": I, "pid": P}
                     {"op": "exited", "pid": P, "code": C}   (C as Popen.returncode)

The workers are this process's children, so it reaps them and reports their exit
codes. It exits when the front closes its end; its workers then see their own channels
close and leave too.
"""

from __future__ import annotations

import argparse
import array
import gc
import importlib
import importlib.util
import json
import os
import select
import signal
import socket
import sys
import traceback
from typing import Any

from .fds import close_fds

#: What every worker imports anyway: imported once here, shared by all.
WARM_MODULES = (
    "trio",
    "h11",
    "asyncio",
    "rrproxy.worker.main",
    "rrproxy.worker.worker",
    "rrproxy.worker.server",
    "rrproxy.worker.connection",
    "rrproxy.worker.asgi",
    "rrproxy.worker.trio",
    "rrproxy.worker.asyncio",
)
#: Imported when installed.
OPTIONAL_MODULES = (
    "uvloop",
    "wsproto",
    "rrproxy.worker.websocket",
    "rrproxy.worker.wsgi",
    "rrproxy.worker.wsgi_environ",
)
#: Largest request from the front (a spawn with its environment).
MAX_REQUEST = 1024 * 1024


def _set_title(title: str) -> None:
    try:
        import setproctitle
    except ImportError:
        return
    setproctitle.setproctitle(title)


def _send(sock: socket.socket, message: dict[str, Any]) -> None:
    try:
        sock.send(json.dumps(message).encode())
    except OSError:
        pass  # the front is gone: we leave at the next read


def _warm() -> None:
    for name in WARM_MODULES:
        importlib.import_module(name)
    for name in OPTIONAL_MODULES:
        if importlib.util.find_spec(name.split(".")[0]) is not None:
            try:
                importlib.import_module(name)
            except ImportError:
                pass


def _preload(spec: str, app_dir: str) -> str | None:
    """Import the app here, so its pages are shared too; an error line, or None."""
    from .appload import AppLoadError, load_app

    try:
        load_app(spec, app_dir)
    except AppLoadError as exc:
        return str(exc)
    except Exception as exc:  # import-time code of the user's: anything
        return f"--preload {spec}: {type(exc).__name__}: {exc}"
    return None


def _child(fd: int, slot: int, env: dict[str, str], closing: list[int]) -> None:
    """In the forked worker: become `python -m rrproxy.worker --fd FD --slot SLOT`."""
    code = 1
    try:
        for other in closing:
            os.close(other)
        signal.set_wakeup_fd(-1)
        signal.signal(signal.SIGCHLD, signal.SIG_DFL)
        os.environ.clear()
        os.environ.update(env)
        _set_title(f"rrproxy: worker {slot} starting")
        from .worker import main as worker_module

        # What `python -m rrproxy.worker --fd FD --slot SLOT` would see: code that reads
        # sys.argv (as gunicorn's and uvicorn's apps sometimes do) finds the same.
        arguments = ["--fd", str(fd), "--slot", str(slot)]
        sys.argv = [
            os.path.join(os.path.dirname(worker_module.__file__), "__main__.py"),
            *arguments,
        ]
        worker_module.main(arguments)
        code = 0
    except SystemExit as exc:
        code = exc.code if isinstance(exc.code, int) else (0 if exc.code is None else 1)
    except BaseException:
        traceback.print_exc()
    finally:
        for stream in (sys.stdout, sys.stderr):
            try:
                stream.flush()
            except Exception:
                pass
        os._exit(code)


def _spawn_request(request: dict[str, Any], fds: list[int]) -> tuple[int, dict[str, str]] | str:
    """The slot and environment of a spawn request, or why it is refused. Judged
    here, before fork(): a bad value found in the child would leave a forked
    process running the fork server's loop instead of a worker."""
    if request.get("op") != "spawn":
        return f"unknown op {request.get('op')!r}"
    if len(fds) != 1:
        return f"a spawn request carries one fd, not {len(fds)}"
    slot = request.get("slot")
    if type(slot) is not int or slot < 1:
        return f"bad slot {slot!r}"
    env = request.get("env")
    if not isinstance(env, dict):
        return "env must be an object"
    return slot, {str(k): str(v) for k, v in env.items()}


def _spawn(
    sock: socket.socket, request: dict[str, Any], fds: list[int], inherited: list[int]
) -> None:
    """Fork a worker for a spawn request; `inherited` are the fork server's own fds,
    which the child closes."""
    judged = _spawn_request(request, fds)
    if isinstance(judged, str):
        close_fds(fds)
        _send(sock, {"op": "spawned", "id": request.get("id"), "error": judged})
        return
    slot, env = judged
    fd = fds[0]
    try:
        pid = os.fork()
    except OSError as exc:
        os.close(fd)
        _send(sock, {"op": "spawned", "id": request.get("id"), "error": str(exc)})
        return
    if pid == 0:
        _child(fd, slot, env, inherited)
    os.close(fd)  # the child holds the worker's channel now
    _send(sock, {"op": "spawned", "id": request.get("id"), "pid": pid})


def _reap(sock: socket.socket) -> None:
    while True:
        try:
            pid, status = os.waitpid(-1, os.WNOHANG)
        except ChildProcessError:
            return
        if pid == 0:
            return
        _send(sock, {"op": "exited", "pid": pid, "code": os.waitstatus_to_exitcode(status)})


def serve(sock: socket.socket) -> None:
    """Fork on request and report exits, until the front closes its end."""
    wakeup_read, wakeup_write = os.pipe()
    os.set_blocking(wakeup_write, False)
    signal.set_wakeup_fd(wakeup_write)
    # A Python-level handler, so that SIGCHLD reaches the wakeup pipe.
    signal.signal(signal.SIGCHLD, lambda signum, frame: None)
    fd_size = array.array("i").itemsize
    while True:
        watched: list[socket.socket | int] = [sock, wakeup_read]
        readable, _, _ = select.select(watched, [], [])
        if wakeup_read in readable:
            os.read(wakeup_read, 4096)
            _reap(sock)
        if sock not in readable:
            continue
        try:
            data, ancdata, flags, _ = sock.recvmsg(MAX_REQUEST, socket.CMSG_SPACE(4 * fd_size))
        except InterruptedError:
            continue
        except OSError:
            return  # the front is gone (a reset when it closed with data unread)
        fds: list[int] = []
        for level, kind, payload in ancdata:
            if level == socket.SOL_SOCKET and kind == socket.SCM_RIGHTS:
                fds.extend(array.array("i", payload[: len(payload) - len(payload) % fd_size]))
        if not data:
            close_fds(fds)
            return  # the front closed its end: we are done
        try:
            request = json.loads(data)
        except ValueError:
            request = {}
        if flags & (socket.MSG_CTRUNC | socket.MSG_TRUNC) or not isinstance(request, dict):
            request = {}
        # The child closes all three: the pipe's read end too, or every worker
        # would hold it open for the fork server's life.
        _spawn(sock, request, fds, [sock.fileno(), wakeup_read, wakeup_write])
        # A child that exited between two reads is reported now, not at the next one.
        _reap(sock)


def main(argv: list[str] | None = None) -> None:
    """The zygote process: import what workers run (and the app, with --preload),
    tell the front it is ready, then fork on request until the front closes its end."""
    parser = argparse.ArgumentParser(prog="rrproxy-zygote")
    parser.add_argument("--fd", type=int, required=True)
    parser.add_argument("--preload", metavar="APP")
    parser.add_argument("--app-dir", default=".")
    args = parser.parse_args(argv)
    signal.signal(signal.SIGINT, signal.SIG_IGN)  # Ctrl-C is the front's to handle
    os.set_inheritable(args.fd, False)
    sock = socket.socket(fileno=args.fd)
    _set_title("rrproxy: fork server" + (f" {args.preload}" if args.preload else ""))
    _warm()
    if args.preload:
        error = _preload(args.preload, args.app_dir)
        if error is not None:
            _send(sock, {"op": "failed", "error": error})
            sys.exit(2)
        import threading

        if threading.active_count() > 1:
            # fork() copies only the calling thread: the app's own threads (and any lock
            # one held) would be missing in every worker.
            print(
                f"rrproxy: warning: --preload: importing {args.preload} started "
                f"{threading.active_count() - 1} thread(s); forked workers do not have "
                "them (start threads in lifespan startup instead)",
                file=sys.stderr,
                flush=True,
            )
    # What is imported now lives as long as every worker: keep the collector from
    # touching it, so reference counts and gc do not unshare the pages at once.
    gc.collect()
    gc.freeze()
    _send(sock, {"op": "ready", "pid": os.getpid()})
    serve(sock)


if __name__ == "__main__":
    main()
