"""What a worker needs from its event loop, and nothing more.

The worker's logic (the HTTP connection loop, the ASGI cycles, WebSockets, the IPC
message loop, drain) is written once against this interface; `worker/trio/` and
`worker/asyncio/` are thin drivers implementing it with mirrored file names, as
hypercorn keeps one `protocol/` and small trio and asyncio glue. Cancellation is
scopes (trio's model): asyncio's is built from task cancellation in the driver.

Measured before choosing (a scope entered and left, µs, this machine): trio's
CancelScope 7.6 and move_on_at 10.7; anyio's scope 11.5 on trio and 7.0 on uvloop;
asyncio.timeout_at 8.4; the asyncio driver's own scope 0.8. So no layer is added on
trio, the asyncio driver has its own light scope, and the hot path enters one scope
per connection, not one per wait.
"""

from __future__ import annotations

import socket
from collections import deque
from collections.abc import AsyncIterator, Awaitable, Callable
from contextlib import AbstractAsyncContextManager, AbstractContextManager
from types import TracebackType
from typing import Any, Protocol, TypeVar

T = TypeVar("T")


def inet_address(name: object) -> tuple[str, int] | None:
    """(host, port) of a getsockname()/getpeername() result, or None for anything else.

    A unix socket's name is a str ('' when unnamed), and indexing it would give
    ('/', 't'); uvicorn's get_local_addr likewise answers None for it, and ASGI's
    `server`/`client` are None when not an internet address.
    """
    if isinstance(name, tuple) and len(name) >= 2 and isinstance(name[1], int):
        return (str(name[0]), name[1])
    return None


class HasFileno(Protocol):
    """Anything with a file descriptor (a socket): what the loops can wait on."""

    def fileno(self) -> int:
        """The descriptor."""
        ...


#: A socket or a bare descriptor.
FileLike = HasFileno | int


class CancelScope(Protocol):
    """A context manager: leaving it early by `cancel()` or by its deadline is
    caught at its exit (`cancelled_caught`); what runs inside sees the loop's
    cancellation exception at its next await."""

    #: When the scope cancels itself (loop time; inf: never). May be moved while
    #: the scope is entered.
    deadline: float
    #: Whether the scope's exit swallowed its own cancellation.
    cancelled_caught: bool

    def cancel(self) -> None:
        """Cancel what runs inside now (or at entry, if not entered yet); a no-op once
        the scope has exited."""

    def __enter__(self) -> CancelScope: ...

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
        /,
    ) -> bool | None: ...


class Event(Protocol):
    """A one-shot flag tasks wait on (trio.Event, asyncio.Event): once set it stays
    set; make a fresh one to wait again."""

    def set(self) -> None:
        """Set the flag and wake every waiter (from the loop's thread only)."""

    def is_set(self) -> bool:
        """Whether set() has been called."""

    # object: trio's wait() returns None, asyncio's True; nothing uses the value.
    async def wait(self) -> object:
        """Return once the flag is set (at once if it already is)."""


class TaskGroup(Protocol):
    """A nursery: `start_soon` runs a task in it; leaving the `async with` waits for
    them; `cancel()` cancels the body and every task."""

    def start_soon(self, function: Callable[..., Awaitable[Any]], *args: Any) -> None:
        """Start `await function(*args)` as a task of the group; it begins at the
        loop's next turn, not before this returns."""

    def cancel(self) -> None:
        """Cancel the `async with` body and every task in the group; the exit then
        completes once they have all finished."""


class Stream(Protocol):
    """A byte stream to a server (the Redis client's connection)."""

    async def send_all(self, data: bytes) -> None:
        """Send all of `data`, waiting while the peer does not keep up."""

    async def receive_some(self, max_bytes: int) -> bytes:
        """Up to `max_bytes` of what has arrived, waiting for at least one; b"" once
        the server has closed its side."""

    async def aclose(self) -> None:
        """Close the connection (the TLS one too, where there is one)."""


class ResourceClosed(Exception):
    """A socket waited on was closed (notify_closing) by another task."""


class ResourceBusy(Exception):
    """Another task is already waiting for the same socket to turn readable (or
    writable): trio's BusyResourceError, on both loops."""


class Transport(Protocol):
    """One client connection as the HTTP logic sees it: bytes in, bytes out.
    Reads never block the loop; a reset counts as the end of the stream."""

    #: The peer's (host, port), when it has one.
    client: tuple[str, int] | None

    def server_address(self) -> tuple[str, int] | None:
        """The local (host, port) the client connected to (ASGI's `server`, WSGI's
        SERVER_NAME/PORT); None for a unix socket or when it cannot be read."""

    async def receive(self) -> bytes:
        """The next bytes (b"" at EOF or on a reset). The first call that returns
        data runs the transport's `on_first_read` callback (the handoff answer)."""

    async def send(self, data: bytes) -> None:
        """All of `data`; ClientDisconnected if the client is gone or takes none of
        it for the transport's send timeout."""

    async def sendfile(self, file: Any, offset: int, count: int) -> int:
        """`count` bytes of an open file from `offset` (os.sendfile where the loop can);
        how many were sent. ClientDisconnected as for send()."""

    def client_gone(self) -> bool:
        """Whether the client has closed or reset its side (for the disconnect
        sweep; a half-close counts as gone, as for uvicorn and Node)."""

    def shutdown_write(self) -> None:
        """Half-close: send FIN after what was sent, keep reading (the lingering close
        after an error answer). Errors are ignored."""

    def close(self) -> None:
        """Close the connection at once (errors ignored). A transport closed before its
        first read still runs `on_first_read`, so the front learns the outcome."""


class Backend(Protocol):
    """One event loop as the worker uses it: time, cancellation, tasks, readiness of
    raw sockets, signals, client transports, threads. The methods other than `run`
    are called on the loop, from inside `run`."""

    #: "trio", "asyncio" or "uvloop".
    name: str

    def current_time(self) -> float:
        """The loop's clock in seconds (monotonic): the time of every deadline here."""

    async def sleep(self, seconds: float) -> None:
        """Wait `seconds` (cancellable)."""

    async def sleep_until(self, when: float) -> None:
        """Wait until current_time() reaches `when` (at once if it has)."""

    async def checkpoint(self) -> None:
        """Let other tasks run (and see a pending cancellation)."""

    def event(self) -> Event:
        """A new, unset Event."""

    def cancel_scope(self, deadline: float = ...) -> CancelScope:
        """A new scope, not yet entered, cancelling itself at `deadline` (loop time;
        by default never)."""

    def move_on_after(self, seconds: float) -> CancelScope:
        """A scope whose deadline is `seconds` from now: the body is abandoned when it
        passes, and `cancelled_caught` tells afterwards whether it was."""

    def task_group(self) -> AbstractAsyncContextManager[TaskGroup]:
        """A new TaskGroup, to enter with `async with`."""

    def is_cancellation(self, exc: BaseException) -> bool:
        """Whether `exc` is the loop's cancellation (trio.Cancelled, CancelledError)."""

    def stray_cancellation(self, exc: BaseException) -> bool:
        """Whether `exc` is a CancelledError an app raised on its own (a task it cancelled and
        then awaited), its task not being cancelled: the app's error, not the loop's
        cancellation. Never under trio, whose Cancelled only trio raises."""

    async def wait_readable(self, sock: FileLike) -> None:
        """Wait until `sock` (a socket or an fd) has something to read, or an incoming
        connection for a listener. ResourceClosed if notify_closing() ends the wait."""

    async def wait_writable(self, sock: FileLike) -> None:
        """Wait until `sock` (a socket or an fd) can take more bytes; ResourceClosed as
        for wait_readable()."""

    def notify_closing(self, sock: FileLike) -> None:
        """Wake the tasks waiting on `sock` with ResourceClosed: call it before closing
        a socket another task may be waiting on (a waiter woken by a bare close would
        see EBADF, or another connection that took the fd number)."""

    def signal_receiver(self, *signals: int) -> AbstractContextManager[AsyncIterator[int]]:
        """While entered, `signals` are caught and come out of the iterator it gives
        (signal numbers, in the order they arrived) instead of acting."""

    async def open_transport(
        self,
        sock: socket.socket,
        send_timeout: float,
        on_first_read: Callable[[], None] | None = None,
    ) -> Transport:
        """Serve a connected socket (handed over by the front, or accepted)."""

    async def open_tcp_stream(
        self, host: str, port: int, tls_hostname: str | None = None
    ) -> Stream:
        """A client connection to `host:port` (the Redis state store); with TLS when
        `tls_hostname` is given, verified against it and the system's CAs."""

    def thread_pool(self, size: int) -> ThreadPool:
        """Run blocking code (WSGI apps) in `size` threads; see ThreadPool."""

    def run(self, main: Callable[..., Awaitable[T]], *args: Any) -> T:
        """Start the loop, run `await main(*args)` on it, and return its result once
        the loop has finished (the worker's whole life)."""


class ThreadPool(Protocol):
    """Threads for blocking code, tied to the loop that first used `run()`: the
    WSGI app runs in them while the loop does all socket I/O."""

    async def run(self, function: Callable[..., T], *args: Any) -> T:
        """`function(*args)` in a pool thread (waiting for a free one if all are busy),
        its result back on the loop."""

    def call_soon(self, function: Callable[..., Any], *args: Any) -> None:
        """From a pool thread: run `function(*args)` on the loop soon (thread-safe)."""

    def call_async(self, function: Callable[..., Awaitable[T]], *args: Any) -> T:
        """From a pool thread: run `await function(*args)` on the loop, and wait for
        its result (or exception) in this thread."""


class Queue:
    """An unbounded FIFO between tasks of one loop (the lifespan's and a WebSocket's
    inbox), built on the backend's Event. `close()` ends it: `get()` then raises
    QueueClosed once it is empty."""

    __slots__ = ("_backend", "_closed", "_items", "_ready")

    def __init__(self, backend: Backend) -> None:
        self._backend = backend
        self._items: deque[Any] = deque()
        self._ready = backend.event()
        self._closed = False

    def put(self, item: Any) -> None:
        """Append `item` without waiting; QueueClosed once the queue is closed."""
        if self._closed:
            raise QueueClosed
        self._items.append(item)
        self._ready.set()

    def __len__(self) -> int:
        return len(self._items)

    async def get(self) -> Any:
        """The oldest item, waiting for one; QueueClosed once it is closed and empty.
        One consumer at a time."""
        while not self._items:
            if self._closed:
                raise QueueClosed
            # One consumer: a fresh event each wait; put() sets the current one.
            self._ready = self._backend.event()
            await self._ready.wait()
        return self._items.popleft()

    def close(self) -> None:
        """No more put(); the consumer still gets what is queued, then QueueClosed."""
        self._closed = True
        self._ready.set()

    @property
    def closed(self) -> bool:
        """Whether close() has been called."""
        return self._closed


class QueueClosed(Exception):
    """Raised by put() after close(), and by get() once a closed queue is empty."""
