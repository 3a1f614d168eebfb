"""Starting worker processes: a fresh interpreter (`python -m rrproxy.worker`), or with
--fork-server a fork of the zygote (front/forkserver.py, rrproxy/zygote.py).

The supervisor asks for a process holding a worker's channel end and gets back
something with trio.Process's pid, returncode, wait() and send_signal(). Everything
after that (the handshake, supervision, reload, the re-hand guarantee) is the same
whichever way the process started.
"""

from __future__ import annotations

import logging
import os
import socket
import subprocess
import sys
from typing import Protocol

import trio

from ..config import Config
from ..ipc.channel import socketpair
from .forkserver import ForkedProcess, ForkServer, ForkServerError

log = logging.getLogger("rrproxy.front")

#: Never passed to workers (or to whatever they start).
PRIVATE_ENV = ("RRPROXY_ADMIN_TOKEN",)


class BootError(Exception):
    """A worker could not start during the initial boot: rrproxy exits 2."""


class ChildProcess(Protocol):
    """A worker process as the front handles it: trio.Process, ForkedProcess, or a
    test's fake."""

    @property
    def pid(self) -> int:
        """The process id."""

    @property
    def returncode(self) -> int | None:
        """None while it runs; then its exit code, or minus the signal that ended it."""

    async def wait(self) -> int:
        """Wait until it has exited and been reaped; its returncode."""

    def send_signal(self, sig: int, /) -> None:
        """Signal it, if it is still there."""


class Spawner:
    """Starts worker processes for the supervisor (which can be given another, such
    as a test's fake, in its place)."""

    def __init__(self, config: Config) -> None:
        self.config = config
        #: The zygote new workers are forked from (--fork-server), while it is up.
        self.fork_server: ForkServer | None = None
        #: Where the fork servers' reader tasks run: the supervisor's nursery.
        self.nursery: trio.Nursery | None = None

    def environment(self) -> dict[str, str]:
        """The workers' environment: ours without the secrets, plus --env-file."""
        env = {k: v for k, v in os.environ.items() if k not in PRIVATE_ENV}
        for key, value in self.config.env:  # --env-file
            # Variables already set win, as with uvicorn --env-file (python-dotenv's
            # load_dotenv): the deployment's environment overrides the checked-in file.
            env.setdefault(key, value)
        return env

    async def start(self, slot_id: int) -> tuple[ChildProcess, socket.socket] | None:
        """A worker process for the slot, and the front's end of the new channel that
        only the worker holds the other end of; None (logged) if no process could be
        started at all."""
        front_end, worker_end = socketpair()
        try:
            process = await self.spawn(slot_id, worker_end)
        except OSError as exc:
            front_end.close()
            log.error("cannot start worker %d: %s", slot_id, exc)
            return None
        finally:
            # Only the worker may hold its end: when it dies, we see EOF.
            worker_end.close()
        return process, front_end

    async def spawn(self, slot_id: int, worker_end: socket.socket) -> ChildProcess:
        """A worker process for the slot, holding `worker_end` (the caller closes its own
        copy). OSError if no process could be started at all."""
        env = self.environment()
        server = self.fork_server
        if server is not None and server.alive:
            try:
                process = await server.spawn(slot_id, env, worker_end.fileno())
            except ForkServerError as exc:
                log.error("worker %d: %s; starting it as a fresh interpreter", slot_id, exc)
            else:
                process.zygote = server
                return process
        return await trio.lowlevel.open_process(
            [
                sys.executable,
                "-m",
                # Benchmarks swap in loadtest.null_worker to measure the front alone.
                os.environ.get("RRPROXY_WORKER_MODULE", "rrproxy.worker"),
                "--fd",
                str(worker_end.fileno()),
                "--slot",
                str(slot_id),
            ],
            pass_fds=(worker_end.fileno(),),
            stdin=subprocess.DEVNULL,
            env=env,
        )

    # --- the fork server -------------------------------------------------------------------

    async def start_fork_server(self, booting: bool = False) -> bool:
        """A new zygote: at boot, and for each reload under --preload, so that new code
        is imported. A preload that fails stops the boot (BootError: exit 2), or on
        reload returns False and keeps the old zygote and workers. A zygote that fails
        otherwise leaves spawning to fresh interpreters (True)."""
        assert self.nursery is not None
        worker = self.config.worker
        preload = worker.app if self.config.preload else None
        try:
            server = await ForkServer.start(preload, worker.app_dir)
        except ForkServerError as exc:
            if self.config.preload and booting:
                raise BootError(f"--preload: {exc}") from None
            if self.config.preload:
                log.error("reload: the fork server could not preload the app: %s", exc)
                return False
            log.error("%s: workers start as fresh interpreters", exc)
            return True
        old, self.fork_server = self.fork_server, server
        self.nursery.start_soon(self._own, server)
        if old is not None:
            self._retire(old)
        log.debug(
            "fork server ready (pid %d%s)",
            server.process.pid,
            f", {preload} preloaded" if preload else "",
        )
        return True

    async def _own(self, server: ForkServer) -> None:
        """The task that owns one fork server: it reads its reports and, when it is
        gone or closed, waits for its process (killing it if it lingers)."""
        try:
            await server.run()
        finally:
            with trio.CancelScope(shield=True):
                server.close()
                with trio.move_on_after(5):
                    await server.process.wait()
                if server.process.returncode is None:
                    server.process.kill()
                    await server.process.wait()

    def _retire(self, server: ForkServer) -> None:
        """An old zygote goes once its last worker has exited: it reports their exit
        codes until then."""
        if server is not self.fork_server and server.children == 0:
            server.close()

    def exited(self, process: ChildProcess) -> None:
        """A worker process has been waited for."""
        if isinstance(process, ForkedProcess) and process.zygote is not None:
            self._retire(process.zygote)

    def close(self) -> None:
        """Shutdown: every worker has exited, so the zygote can go."""
        if self.fork_server is not None:
            self.fork_server.close()
