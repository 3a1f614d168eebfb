"""A WorkerLink under test: a real channel (a SOCK_SEQPACKET socketpair) whose worker
end the test drives, a fake process in place of the worker, and a dispatcher that
records what the link asks of it."""

from __future__ import annotations

import os
import signal
import socket
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from typing import cast

import trio
import trio.testing

from ..config import Config, WorkerConfig
from ..ipc.channel import WorkerChannel, socketpair
from ..ipc.messages import (
    PROTOCOL_VERSION,
    Configure,
    Hello,
    Message,
    Ready,
    StateRequest,
    UserMessage,
)
from .dispatcher import Dispatcher
from .link import WorkerLink
from .policies import RoundRobin
from .process import WorkerProcess


def open_fd_count() -> int:
    return len(os.listdir("/proc/self/fd"))


class FakeProcess:
    """The worker process as WorkerProcess and WorkerLink use it."""

    def __init__(self) -> None:
        self.pid = 4242
        self.returncode: int | None = None
        self.signals: list[int] = []
        self._exited = trio.Event()

    async def wait(self) -> int:
        await self._exited.wait()
        assert self.returncode is not None
        return self.returncode

    def send_signal(self, signum: int) -> None:
        self.signals.append(signum)
        self.exit(-signum)

    def exit(self, code: int) -> None:
        self.returncode = code
        self._exited.set()

    @property
    def killed(self) -> bool:
        return signal.SIGKILL in self.signals


class RecordingDispatcher(Dispatcher):
    """Records what the link asks of the dispatcher."""

    def __init__(self) -> None:
        super().__init__(RoundRobin(), lambda: [], max_held=100)
        self.calls: list[tuple[str, int]] = []

    def taken(self, worker: WorkerProcess, conn_id: int) -> None:
        self.calls.append(("taken", conn_id))

    def rejected(self, worker: WorkerProcess, conn_id: int) -> None:
        self.calls.append(("rejected", conn_id))

    def load_changed(self) -> None:
        self.calls.append(("load", -1))


class Harness:
    def __init__(
        self,
        *,
        handoff: bool = True,
        listeners: list[socket.socket] | None = None,
        ready_timeout: float = 60.0,
    ) -> None:
        self.baseline = open_fd_count()
        front_end, worker_end = socketpair()
        self.raw = worker_end  # for bytes no well-behaved worker sends
        self.process = FakeProcess()
        self.worker = WorkerProcess(
            3, cast(trio.Process, self.process), WorkerChannel(front_end, accepts_fds=False)
        )
        self.peer = WorkerChannel(worker_end)
        self.config = Config(
            WorkerConfig(app="app:handler", keep_alive=7.5, forwarded_allow_ips=("10.0.0.1",)),
            workers=2,
            ready_timeout=ready_timeout,
        )
        self.dispatcher = RecordingDispatcher() if handoff else None
        self.ready_calls: list[WorkerProcess] = []
        self.retired: list[str] = []
        self.user_messages: list[UserMessage] = []
        self.state_requests: list[StateRequest] = []
        self.link = WorkerLink(
            self.worker,
            self.config,
            listeners or [],
            self.dispatcher,
            on_ready=self.ready_calls.append,
            on_retire=lambda worker, reason: self.retired.append(reason),
            on_user_message=lambda worker, message: self.user_messages.append(message),
            on_state_request=lambda worker, message: self.state_requests.append(message),
            quiet_failures=lambda: False,
            worker_count=lambda: 2,
        )
        self.finished = False

    async def run(self) -> None:
        await self.link.run()
        self.finished = True

    async def send(self, message: Message) -> None:
        await self.peer.send(message)
        await trio.testing.wait_all_tasks_blocked()

    async def send_raw(self, data: bytes) -> None:
        self.raw.send(data)
        await trio.testing.wait_all_tasks_blocked()

    async def handshake(self) -> Configure:
        await self.peer.send(Hello(PROTOCOL_VERSION, self.process.pid))
        message, fds = await self.peer.receive()
        assert isinstance(message, Configure)
        assert fds == []
        await self.send(Ready())
        assert self.link.ready
        return message

    @property
    def calls(self) -> list[tuple[str, int]]:
        assert self.dispatcher is not None
        return self.dispatcher.calls

    def close(self) -> None:
        self.peer.close()
        self.worker.channel.close()
        assert open_fd_count() == self.baseline, "a descriptor was left open"


@asynccontextmanager
async def linked(harness: Harness) -> AsyncIterator[Harness]:
    """The link running, its handshake done."""
    async with trio.open_nursery() as nursery:
        nursery.start_soon(harness.run)
        await harness.handshake()
        yield harness
        nursery.cancel_scope.cancel()
    harness.close()
