"""WorkerChannel: one private SOCK_SEQPACKET socketpair per worker, messages from
`messages.py`, file descriptors as SCM_RIGHTS, the event loop (a worker Backend:
trio in the front, trio or asyncio in a worker) for waiting.

The hot path never waits: sends and receives are first tried without blocking and
the loop is only asked to wait when the kernel says EAGAIN.
"""

from __future__ import annotations

import array
import select
import socket
import time
from collections import deque
from collections.abc import Callable, Sequence

from ..fds import close_fds
from ..worker.backend import Backend, Event, ResourceClosed
from . import codec, messages
from .messages import MAX_MESSAGE_SIZE, Message, ProtocolError

_FD_SIZE = array.array("i").itemsize
#: Room for a few fds: a peer that sends more than one is a protocol error, but we
#: still want to receive (and close) them rather than have the kernel truncate.
_ANC_SIZE = socket.CMSG_SPACE((max(messages.MAX_BATCH, 64) + 4) * _FD_SIZE)
#: Received descriptors are close-on-exec from the start: a handler that runs
#: `os.system(...)` must not pass our connections (or the channel) to its children.
_RECV_FLAGS = getattr(socket, "MSG_CMSG_CLOEXEC", 0)
_POLLRDHUP = getattr(select, "POLLRDHUP", 0x2000)


class ChannelClosed(Exception):
    """The peer closed its end (or the socket broke)."""


class QueueFull(Exception):
    """The peer has left more than `max_backlog` bytes unread: the message was not
    queued. A peer that does not read its channel must not grow our memory."""


class FdLost(Exception):
    """A valid message arrived but the fd it carried did not (the receiver is out of
    file descriptors: MSG_CTRUNC). The sender still owns its copy and can retry."""

    def __init__(self, message: Message) -> None:
        super().__init__(f"{type(message).__name__}: its fds were dropped (MSG_CTRUNC)")
        self.message = message


def socketpair() -> tuple[socket.socket, socket.socket]:
    """A private, message-preserving channel. Neither end is inheritable until the
    spawner passes the worker's end explicitly."""
    front, worker = socket.socketpair(socket.AF_UNIX, socket.SOCK_SEQPACKET)
    return front, worker


class WorkerChannel:
    """Both ends use this class: the front's end and the worker's end.

    `accepts_fds`: whether the peer may attach file descriptors (the front's end
    says no: workers never send fds, so any that arrive are closed and the message
    is a protocol error). `max_backlog`: bytes of unsent messages this end queues
    for a peer that does not read, before send_nowait raises QueueFull.
    """

    def __init__(
        self,
        sock: socket.socket,
        *,
        backend: Backend | None = None,
        accepts_fds: bool = True,
        max_backlog: int | None = None,
    ) -> None:
        #: None until first needed: a worker's channel talks blocking until its loop
        #: is chosen (use_backend), so an asyncio worker never imports trio.
        self._backend = backend
        sock.setblocking(False)
        self._sock = sock
        self._buffer = bytearray(MAX_MESSAGE_SIZE + 1)
        self._view = memoryview(self._buffer)
        self._backlog: deque[tuple[bytes, Sequence[int]]] = deque()
        self._backlog_bytes = 0
        self._flushing = False
        self._burst = 0
        self.accepts_fds = accepts_fds
        self.max_backlog = max_backlog
        self.closed = False
        self._has_backlog: Event | None = None
        #: The loop's current_time() since when messages have been waiting (None: none).
        self.backlog_since: float | None = None
        #: Since when a try_send has been refused and the peer has not made room
        #: (None: it has, or nothing was refused). Cleared by flush(), which waits
        #: for the socket to turn writable: a refusal need not be followed by any
        #: answer from the peer, so only the channel itself can say it has room.
        self.refused_since: float | None = None
        #: Called (synchronously) once the peer has made room after a refusal: the
        #: front's dispatcher hands out what waited for this worker.
        self.on_room: Callable[[], None] | None = None

    @property
    def _loop(self) -> Backend:
        """The event loop's primitives; trio's unless use_backend chose another."""
        backend = self._backend
        if backend is None:
            from ..worker.trio import BACKEND

            backend = self._backend = BACKEND
        return backend

    @property
    def has_backlog(self) -> Event:
        """Set whenever flush() has work, for the task that owns it: messages are
        queued, or a try_send was refused and flush() waits for room."""
        if self._has_backlog is None:
            self._has_backlog = self._loop.event()
        return self._has_backlog

    def use_backend(self, backend: Backend) -> None:
        """The event loop to wait with from now on (a worker picks its loop after the
        handshake, which runs before any loop)."""
        self._backend = backend
        self._has_backlog = backend.event()
        if self._backlog:
            self.has_backlog.set()

    @property
    def blocked_since(self) -> float | None:
        """Since when the peer has had no room for us (messages wait, or a try_send
        was refused and the socket has not turned writable since); None if it has."""
        queued, refused = self.backlog_since, self.refused_since
        if queued is None:
            return refused
        return queued if refused is None else min(queued, refused)

    @property
    def backlog_bytes(self) -> int:
        """Bytes of messages queued for a peer that has not read them yet."""
        return self._backlog_bytes

    def fileno(self) -> int:
        """The channel socket's descriptor."""
        return self._sock.fileno()

    # --- sending ---------------------------------------------------------------

    def _send_raw(self, data: bytes, fds: Sequence[int]) -> bool:
        """One nonblocking sendmsg; False on EAGAIN, ChannelClosed if broken."""
        try:
            if not fds:
                self._sock.send(data)
            else:
                self._sock.sendmsg(
                    [data], [(socket.SOL_SOCKET, socket.SCM_RIGHTS, array.array("i", fds))]
                )
        except BlockingIOError:
            return False
        except OSError as exc:
            raise ChannelClosed(str(exc)) from None
        return True

    def try_send(self, message: Message, fds: Sequence[int] = ()) -> bool:
        """Send now or not at all: False when the peer's queue is full (the front
        then offers the connection to another worker). A refusal is remembered in
        `refused_since` until the owner's flush() sees room again (then `on_room`)."""
        if self.closed:
            raise ChannelClosed("channel closed")
        if not self._backlog and self._send_raw(codec.encode(message), fds):
            return True
        if self.refused_since is None:
            self.refused_since = self._loop.current_time()
        self.has_backlog.set()
        return False

    async def send(self, message: Message, fds: Sequence[int] = ()) -> None:
        """Send, waiting for room if needed. Messages keep their order: concurrent
        senders queue behind the one that waits. The fd must stay open until the
        send completes (callers keep it until the peer answers anyway)."""
        if self.closed:
            raise ChannelClosed("channel closed")
        data = codec.encode(message)
        if not self._backlog and self._send_raw(data, fds):
            return
        self._queue(data, fds)
        await self.flush()

    def send_nowait(self, message: Message, force: bool = False) -> bool:
        """Send from synchronous code. If the peer's queue is full the message is
        queued (order kept), `has_backlog` is set and False is returned: the owner of
        the channel runs `flush()` (see `run_flusher`). Past `max_backlog` queued
        bytes, QueueFull is raised instead, unless `force` (for small messages that
        must not be lost, such as Stop)."""
        if self.closed:
            raise ChannelClosed("channel closed")
        data = codec.encode(message)
        if not self._backlog and self._send_raw(data, ()):
            return True
        limit = self.max_backlog
        if limit is not None and not force and self._backlog_bytes + len(data) > limit:
            raise QueueFull(f"{self._backlog_bytes} bytes already wait for the peer")
        self._queue(data, ())
        return False

    def _queue(self, data: bytes, fds: Sequence[int]) -> None:
        if not self._backlog:
            self.backlog_since = self._loop.current_time()
        self._backlog.append((data, fds))
        self._backlog_bytes += len(data)
        self.has_backlog.set()

    async def flush(self) -> None:
        """Send everything queued, waiting for room, and after a refused try_send
        wait until the socket is writable again (then `on_room`). Concurrent callers
        return at once and leave the work to the one already flushing (only one task
        may wait on the socket). ChannelClosed if the peer is gone."""
        if self._flushing:
            return
        self._flushing = True
        try:
            while self._backlog or self.refused_since is not None:
                if self.closed:
                    raise ChannelClosed("channel closed")
                if self._backlog:
                    data, fds = self._backlog[0]
                    if self._send_raw(data, fds):
                        self._backlog.popleft()
                        self._backlog_bytes -= len(data)
                        if not self._backlog:
                            self.backlog_since = None
                        continue
                try:
                    await self._loop.wait_writable(self._sock)
                except ResourceClosed:
                    raise ChannelClosed("channel closed") from None
                if not self._backlog and self.refused_since is not None:
                    # Writable with nothing queued: what was refused would go now.
                    self.refused_since = None
                    if self.on_room is not None:
                        self.on_room()
        finally:
            self._flushing = False
            if self._backlog or self.refused_since is not None:
                # Cut short (a handler's send() cancelled while it was the one
                # flushing): run_flusher, which returned at once while we flushed,
                # takes the rest over instead of waiting for the next message.
                self.has_backlog.set()

    async def drain(self) -> None:
        """Wait until everything queued has gone, whoever is flushing it (flush()
        returns at once while another task flushes). For a worker's last words
        before it exits. ChannelClosed if the peer is gone."""
        while self._backlog:
            if self.closed:
                raise ChannelClosed("channel closed")
            if self._flushing:
                await self._loop.sleep(0.005)
            else:
                await self.flush()

    async def run_flusher(self) -> None:
        """Flush whenever something is queued, until the channel closes. Run by the
        task that owns the channel's peer (the front's per-worker task, the worker's
        main nursery), so a peer that goes away ends only this task, handled."""
        while True:
            await self.has_backlog.wait()
            self._has_backlog = self._loop.event()
            try:
                await self.flush()
            except ChannelClosed:
                self._backlog.clear()
                self._backlog_bytes = 0
                self.backlog_since = self.refused_since = None
                return

    # --- receiving -------------------------------------------------------------

    def _receive_raw(self) -> tuple[Message, list[int]] | None:
        """One nonblocking recvmsg; None on EAGAIN."""
        try:
            nbytes, ancdata, flags, _ = self._sock.recvmsg_into(
                [self._view], _ANC_SIZE, _RECV_FLAGS
            )
        except BlockingIOError:
            return None
        except OSError as exc:
            raise ChannelClosed(str(exc)) from None
        fds: list[int] = []
        for level, kind, payload in ancdata:
            if level == socket.SOL_SOCKET and kind == socket.SCM_RIGHTS:
                usable = len(payload) - len(payload) % _FD_SIZE
                fds.extend(array.array("i", payload[:usable]))
        if nbytes == 0 and not fds:
            # On SOCK_SEQPACKET an empty record also reads as 0 bytes: only a hangup
            # is the end (a peer must not get itself killed as "gone" by sending one).
            if self._hung_up():
                raise ChannelClosed("peer closed the channel")
            raise ProtocolError("empty message")
        if flags & socket.MSG_CTRUNC:
            # The kernel dropped descriptors we had no room for (or no fd left to
            # put them in: EMFILE): whatever arrived is incomplete, so close it all
            # rather than leak or misuse it, and say which message lost its fd.
            close_fds(fds)
            try:
                message = codec.decode(bytes(self._view[:nbytes]))
            except ProtocolError:
                message = None
            # Fewer than it should carry: lost to EMFILE. More: a broken sender.
            expected = codec.fd_count(message) if message is not None else 0
            if message is not None and self.accepts_fds and len(fds) <= expected and expected:
                raise FdLost(message)
            raise ProtocolError("ancillary data truncated (MSG_CTRUNC)")
        if flags & socket.MSG_TRUNC or nbytes > MAX_MESSAGE_SIZE:
            close_fds(fds)
            raise ProtocolError("message larger than the limit")
        try:
            message = codec.decode(bytes(self._view[:nbytes]))
        except ProtocolError:
            close_fds(fds)
            raise
        expected = codec.fd_count(message) if self.accepts_fds else 0
        if len(fds) != expected:
            close_fds(fds)
            raise ProtocolError(
                f"{type(message).__name__} arrived with {len(fds)} fds, expected {expected}"
            )
        return message, fds

    # --- before any event loop runs (the worker's handshake) -------------------------

    def send_blocking(self, message: Message, timeout: float = 30.0) -> None:
        """Send, waiting up to `timeout` seconds for room, without an event loop."""
        data = codec.encode(message)
        deadline = time.monotonic() + timeout
        while not self._send_raw(data, ()):
            remaining = deadline - time.monotonic()
            if remaining <= 0 or not select.select([], [self._sock], [], remaining)[1]:
                raise ChannelClosed("the peer does not read its channel")

    def receive_blocking(self, timeout: float) -> tuple[Message, list[int]] | None:
        """The next message, waiting up to `timeout` seconds without an event loop;
        None if none came in time."""
        deadline = time.monotonic() + timeout
        while True:
            result = self._receive_raw()
            if result is not None:
                return result
            remaining = deadline - time.monotonic()
            if remaining <= 0 or not select.select([self._sock], [], [], remaining)[0]:
                return None

    def _hung_up(self) -> bool:
        poller = select.poll()
        poller.register(self._sock, select.POLLIN | _POLLRDHUP)
        return any(events & (select.POLLHUP | _POLLRDHUP) for _, events in poller.poll(0))

    def receive_nowait(self) -> tuple[Message, list[int]] | None:
        """The next message if one is already waiting, else None (never blocks).
        Raises ChannelClosed at EOF and ProtocolError for a malformed message."""
        if self.closed:
            raise ChannelClosed("channel closed")
        return self._receive_raw()

    async def receive(self) -> tuple[Message, list[int]]:
        """Next message and the fd it carries (the caller owns and must close it).
        Raises ChannelClosed at EOF and ProtocolError for a malformed message."""
        self._burst += 1
        if self._burst >= 64:
            # A peer that floods us must not starve the other tasks: yield now and
            # then, *before* receiving, so a cancellation there loses no message
            # (and no fd).
            self._burst = 0
            await self._loop.checkpoint()
        while True:
            if self.closed:
                raise ChannelClosed("channel closed")
            result = self._receive_raw()
            if result is not None:
                return result
            self._burst = 0
            try:
                await self._loop.wait_readable(self._sock)
            except ResourceClosed:
                raise ChannelClosed("channel closed") from None

    def close(self) -> None:
        """Close this end (waking any task that waits on it); idempotent."""
        if self.closed:
            return
        self.closed = True
        self._loop.notify_closing(self._sock)
        self._sock.close()
