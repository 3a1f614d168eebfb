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

from collections import deque
from collections.abc import AsyncIterator, Awaitable, Callable
from contextlib import AbstractAsyncContextManager, AbstractContextManager
from types import TracebackType
from typing import Any, Protocol, TypeVar

T = TypeVar("T")


class CancelScope(Protocol):
    """A context manager: leaving it early by `cancel()` or by its deadline is
    caught at its exit (`cancelled_caught`); what runs inside sees the loop's
    cancellation exception at its next await."""

    deadline: float
    cancelled_caught: bool

    def cancel(self) -> None: ...

    def __enter__(self) -> CancelScope: ...

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
        /,
    ) -> bool | None: ...


class Event(Protocol):
    def set(self) -> None: ...

    def is_set(self) -> bool: ...

    # object: trio's wait() returns None, asyncio's True; nothing uses the value.
    async def wait(self) -> object: ...


class TaskGroup(Protocol):
    """A nursery: `start_soon` runs a task in it; leaving the `async with` waits for
    them; `cancel()` cancels the body and every task."""

    def start_soon(self, function: Callable[..., Awaitable[Any]], *args: Any) -> None: ...

    def cancel(self) -> None: ...


class Stream(Protocol):
    """A byte stream to a server (the Redis client's connection)."""

    async def send_all(self, data: bytes) -> None: ...

    async def receive_some(self, max_bytes: int) -> bytes: ...

    async def aclose(self) -> None: ...


class ResourceClosed(Exception):
    """A socket waited on was closed (notify_closing) by another task."""


class Transport(Protocol):
    """One client connection as the HTTP logic sees it: bytes in, bytes out.
    Reads never block the loop; a reset counts as the end of the stream."""

    #: The peer's (host, port), when it has one.
    client: tuple[str, int] | None

    def server_address(self) -> tuple[str, int] | None: ...

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

    def shutdown_write(self) -> None: ...

    def close(self) -> None: ...


class Backend(Protocol):
    #: "trio", "asyncio" or "uvloop".
    name: str

    def current_time(self) -> float: ...

    async def sleep(self, seconds: float) -> None: ...

    async def sleep_until(self, when: float) -> None: ...

    async def checkpoint(self) -> None:
        """Let other tasks run (and see a pending cancellation)."""

    def event(self) -> Event: ...

    def cancel_scope(self, deadline: float = ...) -> CancelScope: ...

    def move_on_after(self, seconds: float) -> CancelScope: ...

    def task_group(self) -> AbstractAsyncContextManager[TaskGroup]: ...

    def is_cancellation(self, exc: BaseException) -> bool:
        """Whether `exc` is the loop's cancellation (trio.Cancelled, CancelledError)."""

    async def wait_readable(self, sock: Any) -> None: ...

    async def wait_writable(self, sock: Any) -> None: ...

    def notify_closing(self, sock: Any) -> None: ...

    def signal_receiver(self, *signals: int) -> AbstractContextManager[AsyncIterator[int]]: ...

    async def open_transport(
        self,
        sock: Any,
        send_timeout: float,
        on_first_read: Callable[[], None] | None = None,
    ) -> Transport:
        """Serve a connected socket (handed over by the front, or accepted)."""

    async def open_tcp_stream(
        self, host: str, port: int, tls_hostname: str | None = None
    ) -> Stream: ...

    def thread_pool(self, size: int) -> ThreadPool:
        """Run blocking code (WSGI apps) in `size` threads; see ThreadPool."""

    def run(self, main: Callable[..., Awaitable[T]], *args: Any) -> T: ...


class ThreadPool(Protocol):
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
        if self._closed:
            raise QueueClosed
        self._items.append(item)
        self._ready.set()

    def __len__(self) -> int:
        return len(self._items)

    async def get(self) -> Any:
        while not self._items:
            if self._closed:
                raise QueueClosed
            # One consumer: a fresh event each wait; put() sets the current one.
            self._ready = self._backend.event()
            await self._ready.wait()
        return self._items.popleft()

    def close(self) -> None:
        self._closed = True
        self._ready.set()

    @property
    def closed(self) -> bool:
        return self._closed


class QueueClosed(Exception):
    pass
