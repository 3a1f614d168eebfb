"""The front's side of the fork server (rrproxy/zygote.py): start it, ask it for
workers, learn their exit codes.

A forked worker is the zygote's child, not ours, so the front watches it through a
pidfd (readable once the process has exited, whoever its parent is; signals through
it cannot hit a recycled pid) and takes its exit code from the zygote's report.
ForkedProcess offers what the supervisor uses of trio's Process: pid, returncode,
wait() and send_signal().

If the zygote dies, spawning falls back to fresh interpreters (logged once), and the
workers it had forked keep running and are still watched through their pidfds.
"""

from __future__ import annotations

import array
import json
import logging
import os
import signal
import socket
import subprocess
import sys
from collections.abc import Mapping
from typing import Any

import trio

log = logging.getLogger("rrproxy.front")

#: How long the zygote may take to import the worker's modules (and a preloaded app).
START_TIMEOUT = 60.0
#: How long a spawn may take (a fork: milliseconds).
SPAWN_TIMEOUT = 10.0
#: After a worker's pidfd says it exited, how long to wait for the zygote's report of
#: its exit code.
EXIT_REPORT_GRACE = 2.0
#: The exit code recorded when the zygote could not report one (it is gone).
UNKNOWN_EXIT = 255


class ForkServerError(Exception):
    """The fork server could not start (the message is for the user), or is gone."""


class ForkedProcess:
    """A worker forked by the zygote, seen from the front."""

    def __init__(self, pid: int) -> None:
        self.pid = pid
        self.returncode: int | None = None
        self._pidfd: int | None = os.pidfd_open(pid)
        self._reported: int | None = None
        self._report = trio.Event()
        # trio lets one task at a time wait on an fd; Process.wait() does the same.
        self._wait_lock = trio.Lock()
        #: The fork server it came from (set by the supervisor).
        self.zygote: ForkServer | None = None

    def reported(self, code: int | None) -> None:
        """The zygote's report (None: it is gone and will never report)."""
        if self._reported is None and code is not None:
            self._reported = code
        self._report.set()

    async def wait(self) -> int:
        """The exit code, once the process has exited (the pidfd turns readable) and
        the zygote has reported it; UNKNOWN_EXIT if no report comes in time."""
        async with self._wait_lock:
            if self.returncode is None:
                assert self._pidfd is not None
                await trio.lowlevel.wait_readable(self._pidfd)
                with trio.move_on_after(EXIT_REPORT_GRACE):
                    await self._report.wait()
                self.returncode = UNKNOWN_EXIT if self._reported is None else self._reported
                fd, self._pidfd = self._pidfd, None
                os.close(fd)
        return self.returncode

    def send_signal(self, signum: int) -> None:
        """Signal the process through its pidfd (never a recycled pid); nothing once
        it has exited."""
        if self._pidfd is None or self.returncode is not None:
            return
        try:
            signal.pidfd_send_signal(self._pidfd, signum)
        except ProcessLookupError:
            pass  # exited, not yet waited for

    def kill(self) -> None:
        """SIGKILL, as trio.Process.kill()."""
        self.send_signal(signal.SIGKILL)

    def close(self) -> None:
        """Give up watching it (its pidfd is closed); only for a process nobody waits
        for."""
        fd, self._pidfd = self._pidfd, None
        if fd is not None:
            os.close(fd)


class ForkServer:
    """A running zygote and its socket: forks workers on request and reports the
    exits of those it forked."""

    def __init__(
        self, process: trio.Process, sock: trio.socket.SocketType, preload: str | None
    ) -> None:
        self.process = process
        self.sock = sock
        self.preload = preload
        self.alive = True
        self._next_id = 0
        self._pending: dict[int, tuple[trio.Event, list[ForkedProcess | str]]] = {}
        self._children: dict[int, ForkedProcess] = {}

    @classmethod
    async def start(cls, preload: str | None, app_dir: str) -> ForkServer:
        """A new zygote, ready to fork; ForkServerError (the zygote's own reason, such
        as the app failing to import under --preload) if it is not."""
        ours, theirs = socket.socketpair(socket.AF_UNIX, socket.SOCK_SEQPACKET)
        ours.set_inheritable(False)
        command = [sys.executable, "-m", "rrproxy.zygote", "--fd", str(theirs.fileno())]
        if preload:
            command += ["--preload", preload, "--app-dir", app_dir]
        try:
            process = await trio.lowlevel.open_process(
                command, pass_fds=(theirs.fileno(),), stdin=subprocess.DEVNULL
            )
        except OSError as exc:
            ours.close()
            raise ForkServerError(f"cannot start the fork server: {exc}") from None
        finally:
            theirs.close()
        sock = trio.socket.from_stdlib_socket(ours)
        server = cls(process, sock, preload)
        try:
            with trio.fail_after(START_TIMEOUT):
                data = await sock.recv(65536)
        except trio.TooSlowError:
            server.close()
            raise ForkServerError("the fork server did not start in time") from None
        message = _decode(data)
        if message.get("op") != "ready":
            server.close()
            error = message.get("error") or "the fork server exited while starting"
            raise ForkServerError(str(error))
        return server

    async def spawn(self, slot: int, env: Mapping[str, str], channel_end: int) -> ForkedProcess:
        """Fork a worker for `slot` holding `channel_end` (the caller closes its own
        copy); ForkServerError if the zygote cannot."""
        if not self.alive:
            raise ForkServerError("the fork server is gone")
        self._next_id += 1
        request_id = self._next_id
        done = trio.Event()
        answer: list[ForkedProcess | str] = []
        self._pending[request_id] = (done, answer)
        request = json.dumps({"op": "spawn", "id": request_id, "slot": slot, "env": dict(env)})
        try:
            fds = array.array("i", [channel_end])
            await self.sock.sendmsg(
                [request.encode()], [(socket.SOL_SOCKET, socket.SCM_RIGHTS, fds)]
            )
            with trio.move_on_after(SPAWN_TIMEOUT):
                await done.wait()
        except OSError as exc:
            self._gone(f"cannot reach it: {exc}")
        except BaseException:
            # Cancelled (the front is stopping) after the fork: nobody will own the
            # worker, so it goes now rather than running on unwatched.
            if answer and isinstance(answer[0], ForkedProcess):
                self._abandon(answer[0])
            raise
        finally:
            self._pending.pop(request_id, None)
        if not answer:
            raise ForkServerError("the fork server could not fork: no answer")
        if isinstance(answer[0], str):
            raise ForkServerError(f"the fork server could not fork: {answer[0]}")
        return answer[0]

    async def run(self) -> None:
        """Read the zygote's reports until it is gone; owned by the supervisor."""
        try:
            while True:
                data = await self.sock.recv(65536)
                if not data:
                    break
                message = _decode(data)
                if message.get("op") == "spawned":
                    self._spawned(message)
                elif message.get("op") == "exited":
                    child = self._children.pop(_int(message.get("pid")), None)
                    if child is not None:
                        child.reported(_int(message.get("code"), UNKNOWN_EXIT))
        except (OSError, trio.ClosedResourceError):
            pass
        self._gone("it exited")

    def _spawned(self, message: dict[str, Any]) -> None:
        """A fork's answer. The child is registered here, before the next report is
        read: a worker that dies at once is reported right after, and were it
        registered only when spawn() resumes, that report would find nobody and
        wait() would give UNKNOWN_EXIT after EXIT_REPORT_GRACE."""
        pending = self._pending.pop(_int(message.get("id")), None)
        pid = message.get("pid")
        if type(pid) is not int or pid <= 0:
            if pending is not None:
                pending[1].append(str(message.get("error") or "no pid in its answer"))
                pending[0].set()
            return
        try:
            child = ForkedProcess(pid)
        except OSError as exc:  # already gone and reaped: its report is on the way
            if pending is not None:
                pending[1].append(f"worker pid {pid} is already gone: {exc}")
                pending[0].set()
            return
        if pending is None:
            # A fork that answered after spawn() gave up (SPAWN_TIMEOUT): its
            # supervisor has moved on, so it must not run on unwatched.
            log.warning("a worker forked too late (pid %d) is stopped", pid)
            self._abandon(child)
            return
        self._children[pid] = child
        pending[1].append(child)
        pending[0].set()

    def _abandon(self, child: ForkedProcess) -> None:
        """SIGKILL a forked worker nobody owns; the zygote reaps it."""
        child.kill()
        child.close()
        self._children.pop(child.pid, None)

    @property
    def children(self) -> int:
        """How many of the workers it forked have not been reported gone."""
        return len(self._children)

    def _gone(self, why: str) -> None:
        if not self.alive:
            return
        self.alive = False
        for done, _ in self._pending.values():
            done.set()
        for child in self._children.values():
            child.reported(None)
        self._children.clear()
        if not self._closing:
            log.error(
                "the fork server (pid %d) is gone (%s): new workers start as fresh interpreters",
                self.process.pid,
                why,
            )

    _closing = False

    def close(self) -> None:
        """Stop it: it exits when its end closes (its workers run on)."""
        self._closing = True
        self.sock.close()


def _int(value: Any, default: int = 0) -> int:
    """An int field of a report (the zygote is ours, but a bad value must not end the
    reader and with it every forked worker's exit code)."""
    return value if type(value) is int else default


def _decode(data: bytes) -> dict[str, Any]:
    try:
        message = json.loads(data)
    except ValueError:
        return {}
    return message if isinstance(message, dict) else {}
