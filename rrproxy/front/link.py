"""WorkerLink: the front's side of the conversation with one worker process.

Handshake (Hello -> Configure -> Ready), then every message the worker sends, each
validated before use. The supervisor decides what happens to workers; the link only
reports (ready, retire requests, breaches) and keeps the worker's counters current.
"""

from __future__ import annotations

import logging
import re
import socket
from collections.abc import Callable
from typing import cast

import trio

from ..config import Config
from ..fds import close_fds
from ..ipc.channel import ChannelClosed
from ..ipc.messages import (
    LATENCY_BUCKETS,
    PROTOCOL_VERSION,
    Configure,
    Failed,
    Hello,
    Load,
    Message,
    ProtocolError,
    Ready,
    Rejected,
    Retire,
    StateRequest,
    Stats,
    Taken,
    UserMessage,
)
from .dispatcher import Dispatcher
from .process import WorkerProcess
from .routing import valid_destination

log = logging.getLogger("rrproxy.front")

#: Time a new worker gets to say Hello.
HELLO_TIMEOUT = 30.0
#: A worker that closed its channel gets this long to exit before it is killed.
CHANNEL_EOF_GRACE = 2.0
#: Protocol breaches after which a retiring worker is killed instead of drained.
MAX_BREACHES = 100


class Breach(Exception):
    """The worker sent something well-formed but out of place."""


class WorkerLink:
    def __init__(
        self,
        worker: WorkerProcess,
        config: Config,
        listeners: list[socket.socket],
        dispatcher: Dispatcher | None,
        *,
        on_ready: Callable[[WorkerProcess], None],
        on_retire: Callable[[WorkerProcess, str], None],
        on_user_message: Callable[[WorkerProcess, UserMessage], None],
        on_state_request: Callable[[WorkerProcess, StateRequest], None],
        quiet_failures: Callable[[], bool],
        worker_count: Callable[[], int],
    ) -> None:
        self.worker = worker
        self.config = config
        self.listeners = listeners
        self.dispatcher = dispatcher
        self.on_ready = on_ready
        self.on_retire = on_retire
        self.on_user_message = on_user_message
        self.on_state_request = on_state_request
        self.quiet_failures = quiet_failures
        self.worker_count = worker_count
        #: The handshake is over: messages are handled by _handle.
        self.ready = False
        #: What the handshake waits for, and how long it may take (for the log line
        #: when it takes longer: HELLO_TIMEOUT, then --ready-timeout).
        self._awaiting = ("start", config.ready_timeout)

    async def run(self) -> None:
        """Talk to the worker until its channel ends. Never raises for anything the
        worker does: a handshake breach or timeout kills it, a later breach retires
        it (its clients are not punished for its bug), a flood of them kills it."""
        worker = self.worker
        try:
            await self._handshake()
            self.ready = True
            await self._serve()
        except ChannelClosed:
            # Normally the worker exited. One that closed its channel but lives on
            # is broken (nothing can reach it): give it a moment, then kill it.
            with trio.move_on_after(CHANNEL_EOF_GRACE):
                await worker.process.wait()
            if worker.process.returncode is None:
                log.error(
                    "worker %d (pid %d) closed its channel but did not exit; killing it",
                    worker.slot_id,
                    worker.pid,
                )
                worker.kill()
        except (ProtocolError, Breach) as exc:
            log.error(
                "worker %d (pid %d) broke the protocol while starting: %s; killing it",
                worker.slot_id,
                worker.pid,
                exc,
            )
            worker.failure = worker.failure or f"protocol error: {exc}"
            worker.kill()
        except trio.TooSlowError:
            what, seconds = self._awaiting
            log.error(
                "worker %d (pid %d) did not %s within %g s; killing it",
                worker.slot_id,
                worker.pid,
                what,
                seconds,
            )
            worker.failure = worker.failure or "did not become ready in time"
            worker.kill()
        except Exception:
            # A bug of ours that a worker's message triggered: this worker goes,
            # the front stays.
            log.exception(
                "worker %d (pid %d): internal error; killing it", worker.slot_id, worker.pid
            )
            worker.failure = worker.failure or "internal error in the front"
            worker.kill()

    def read_remaining(self) -> None:
        """The process has exited: handle every message it sent that is still
        buffered (its last Taken answers, or the Failed that says why it could not
        start), without waiting."""
        channel = self.worker.channel
        while True:
            try:
                received = channel.receive_nowait()
            except ChannelClosed:
                return
            except ProtocolError:
                continue
            if received is None:
                return
            message, fds = received
            close_fds(fds)
            try:
                if self.ready:
                    self._handle(message)
                elif isinstance(message, Failed):
                    self.worker.failure = message.message
            except (ProtocolError, Breach):
                continue
            except Exception:
                log.exception("worker %d: error reading its last messages", self.worker.slot_id)
                return

    async def _handshake(self) -> None:
        worker = self.worker
        self._awaiting = ("say Hello", HELLO_TIMEOUT)
        with trio.fail_after(HELLO_TIMEOUT):
            message, _fd = await worker.channel.receive()
        if not isinstance(message, Hello):
            raise Breach(f"expected Hello, got {type(message).__name__}")
        if message.version != PROTOCOL_VERSION:
            raise Breach(f"protocol version {message.version}, front speaks {PROTOCOL_VERSION}")
        # The shared listening sockets (none; unix or inherited ones under reuseport).
        fds = [listener.fileno() for listener in self.listeners]
        await worker.channel.send(
            Configure(
                worker.slot_id,
                self.config.worker.to_dict(),
                listeners=len(fds),
                worker_count=self.worker_count(),
            ),
            fds,
        )
        self._awaiting = ("start", self.config.ready_timeout)
        with trio.fail_after(self.config.ready_timeout):
            while True:
                message, _fd = await worker.channel.receive()
                if isinstance(message, Ready):
                    self.on_ready(worker)
                    return
                if isinstance(message, Failed):
                    worker.failure = message.message
                    if not self.quiet_failures():
                        log.error(
                            "worker %d (pid %d) cannot start: %s",
                            worker.slot_id,
                            worker.pid,
                            message.message,
                        )
                    continue
                if isinstance(message, Stats):
                    self._stats(message)
                    continue
                raise Breach(f"unexpected {type(message).__name__} before Ready")

    async def _serve(self) -> None:
        worker = self.worker
        breaches = 0
        while True:
            try:
                await self._read()
            except (ProtocolError, Breach) as exc:
                breaches += 1
                if breaches == 1:
                    log.error(
                        "worker %d (pid %d) broke the protocol: %s; retiring it",
                        worker.slot_id,
                        worker.pid,
                        exc,
                    )
                    worker.failure = f"protocol error: {exc}"
                    self.on_retire(worker, f"protocol error: {exc}")
                elif breaches >= MAX_BREACHES:
                    log.error(
                        "worker %d (pid %d) keeps breaking the protocol; killing it",
                        worker.slot_id,
                        worker.pid,
                    )
                    worker.kill()
                    return

    async def _read(self) -> None:
        channel = self.worker.channel
        while True:
            message, fds = await channel.receive()
            close_fds(fds)  # workers never send descriptors (the channel refuses them)
            self._handle(message)

    def _handle(self, message: Message) -> None:
        """One message from a ready worker. Raises ProtocolError or Breach for
        anything out of place, and nothing else for anything a worker can send."""
        worker = self.worker
        dispatcher = self.dispatcher
        worker.last_heard = trio.current_time()
        match message:
            case Taken(active=active) | Load(active=active) if not self._possible(active):
                raise Breach(f"open connections out of range ({str(active)[:20]})")
            case Taken(conn_id=conn_id, active=active):
                if dispatcher is None:
                    raise Breach("Taken under a policy without handoff")
                worker.connections_active = active
                worker.had_clients = True
                dispatcher.taken(worker, conn_id)
            case Load(active=active):
                worker.connections_active = active
                worker.had_clients = True
                if dispatcher is not None:
                    dispatcher.load_changed()
            case Stats():
                self._stats(message)
            case Rejected(conn_id=conn_id):
                if dispatcher is None:
                    raise Breach("Rejected under a policy without handoff")
                dispatcher.rejected(worker, conn_id)
            case Retire(reason=reason):
                self.on_retire(worker, reason[:500])
            case StateRequest():
                self.on_state_request(worker, message)
            case UserMessage(to=to):
                if not valid_destination(to):
                    raise Breach(f"user message to {to[:20]!r}")
                self.on_user_message(worker, message)
            case _:
                raise Breach(f"unexpected {type(message).__name__}")

    def _possible(self, active: object) -> bool:
        """A worker's count of its open connections: the front counts it against
        --max-connections, which no worker can hold more than (the front stops
        handing at it; under `none` each worker stops at its share)."""
        return _count(active) and cast(int, active) <= self.config.max_connections

    def _stats(self, stats: Stats) -> None:
        for name in ("connections_total", "requests_total"):
            if not _count(getattr(stats, name)):
                raise Breach(f"{name} out of range")
        if not self._possible(stats.connections_active):
            raise Breach("open connections out of range")
        statuses = stats.statuses
        if len(statuses) > 1000 or not all(
            isinstance(k, str) and _STATUS.fullmatch(k) and _count(v) for k, v in statuses.items()
        ):
            raise Breach("malformed status counts")
        counts = stats.latency_counts
        if counts and (len(counts) != len(LATENCY_BUCKETS) + 1 or not all(map(_count, counts))):
            raise Breach("malformed latency histogram")
        if not 0 <= stats.latency_sum < 1e15:  # also false for NaN
            raise Breach("latency sum out of range")
        worker = self.worker
        worker.connections_total = stats.connections_total
        worker.connections_active = stats.connections_active
        worker.requests_total = stats.requests_total
        worker.statuses = {int(k): v for k, v in statuses.items()}
        if counts:
            worker.latency_counts = list(counts)
        worker.latency_sum = float(stats.latency_sum)
        worker.last_heard = now = trio.current_time()
        worker.stats_received += 1
        worker.rate_samples.append((now, stats.requests_total))


def _count(value: object) -> bool:
    return isinstance(value, int) and not isinstance(value, bool) and 0 <= value < 2**63


#: A status code as a Stats key: three ASCII digits ("²²²".isdigit() is True).
_STATUS = re.compile(r"[1-5][0-9][0-9]")


__all__ = ["Breach", "ChannelClosed", "WorkerLink"]
