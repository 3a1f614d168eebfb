"""The Backend interface on asyncio (or uvloop).

asyncio has no cancel scopes; `Scope` builds one from task cancellation the way
asyncio.timeout does (cancel the task, catch its CancelledError at the scope's exit,
uncancel), without the timer unless a deadline is set: 0.8 µs to enter and leave
against 8.4 for asyncio.timeout_at (see worker/backend.py).
"""

from __future__ import annotations

import asyncio
import contextlib
import math
import ssl
from collections.abc import AsyncIterator, Awaitable, Callable, Iterator
from concurrent.futures import ThreadPoolExecutor
from typing import Any, TypeVar

from ..backend import Queue, ResourceBusy, ResourceClosed, Stream, Transport

T = TypeVar("T")


class Scope:
    """A cancel scope for the current task (see the module docstring)."""

    __slots__ = (
        "_cancel_called",
        "_cancelling",
        "_deadline",
        "_exited",
        "_handle",
        "_loop",
        "_task",
        "cancelled_caught",
    )

    def __init__(self, deadline: float = math.inf) -> None:
        self._deadline = deadline
        self._task: asyncio.Task[Any] | None = None
        self._loop: asyncio.AbstractEventLoop | None = None
        self._handle: asyncio.TimerHandle | None = None
        self._cancel_called = False
        self._exited = False
        self._cancelling = 0
        self.cancelled_caught = False

    def __enter__(self) -> Scope:
        task = asyncio.current_task()
        assert task is not None, "a scope needs a task"
        self._task = task
        self._loop = asyncio.get_running_loop()
        self._cancelling = task.cancelling()
        if self._cancel_called:
            task.cancel()
        else:
            self._schedule()
        return self

    def __exit__(self, exc_type: Any, exc: Any, tb: Any) -> bool:
        self._exited = True
        if self._handle is not None:
            self._handle.cancel()
            self._handle = None
        # Always uncancel what we cancelled (the left operand runs whenever the scope
        # cancelled); swallow the CancelledError only if it is ours to catch.
        if (
            self._cancel_called
            and self._task is not None
            and self._task.uncancel() <= self._cancelling
            and exc_type is asyncio.CancelledError
        ):
            self.cancelled_caught = True
            return True
        return False

    @property
    def deadline(self) -> float:
        """When the scope cancels itself (loop time; inf: never)."""
        return self._deadline

    @deadline.setter
    def deadline(self, value: float) -> None:
        """Move the deadline; the timer follows lazily (see _schedule)."""
        self._deadline = value
        if self._task is not None and not self._exited and not self._cancel_called:
            self._schedule()

    def _schedule(self) -> None:
        """Make sure a timer fires by the deadline. Lazy, as the connection moves its
        deadline on every wait: a timer that fires no later than the new deadline is
        kept (it checks again when it fires), and a deadline of infinity leaves the
        timer alone; so a keep-alive connection costs about one timer per keep-alive
        period, not a call_at and a cancel per request."""
        deadline = self._deadline
        if deadline == math.inf:
            return
        handle = self._handle
        if handle is not None:
            if handle.when() <= deadline:
                return
            handle.cancel()
            self._handle = None
        assert self._loop is not None
        if deadline <= self._loop.time():
            self.cancel()
        else:
            self._handle = self._loop.call_at(deadline, self._fire)

    def _fire(self) -> None:
        self._handle = None
        if self._exited or self._cancel_called:
            return
        assert self._loop is not None
        if self._deadline <= self._loop.time():
            self.cancel()
        else:
            self._schedule()

    def cancel(self) -> None:
        """Cancel the scope's task (at entry, if not entered yet); it sees
        CancelledError at its next await, which the scope's exit swallows."""
        if self._cancel_called or self._exited:
            return
        self._cancel_called = True
        if self._task is not None:
            if self._handle is not None:
                self._handle.cancel()
                self._handle = None
            self._task.cancel()


class _TaskGroup:
    """A nursery on asyncio.TaskGroup, with cancel() (its body and every task)."""

    __slots__ = ("_group", "_scope")

    def __init__(self) -> None:
        self._scope = Scope()
        self._group = asyncio.TaskGroup()

    async def __aenter__(self) -> _TaskGroup:
        self._scope.__enter__()
        await self._group.__aenter__()
        return self

    async def __aexit__(self, exc_type: Any, exc: Any, tb: Any) -> bool:
        try:
            # Typed as returning None (it does, today); bool() keeps the context
            # manager protocol should a version ever suppress.
            suppress = bool(await self._group.__aexit__(exc_type, exc, tb))  # type: ignore[func-returns-value]
        except BaseException as error:
            if self._scope.__exit__(type(error), error, error.__traceback__):
                return True
            raise
        if self._scope.__exit__(None, None, None):
            return True
        return suppress

    def start_soon(self, function: Callable[..., Awaitable[Any]], *args: Any) -> None:
        # Tasks are async functions: calling one gives the coroutine create_task takes.
        self._group.create_task(function(*args))  # type: ignore[arg-type]

    def cancel(self) -> None:
        self._scope.cancel()


class _Stream:
    """The Redis client's connection on asyncio streams."""

    def __init__(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        self._reader = reader
        self._writer = writer

    async def send_all(self, data: bytes) -> None:
        self._writer.write(data)
        await self._writer.drain()

    async def receive_some(self, max_bytes: int) -> bytes:
        return await self._reader.read(max_bytes)

    async def aclose(self) -> None:
        self._writer.close()
        with contextlib.suppress(OSError, asyncio.CancelledError):
            await self._writer.wait_closed()


class AsyncioBackend:
    """The Backend on asyncio, or on uvloop's loop with `use_uvloop`: Scope for the
    cancel scopes, loop readers and writers for the socket waits."""

    def __init__(self, use_uvloop: bool) -> None:
        self.uvloop = use_uvloop
        self.name = "uvloop" if use_uvloop else "asyncio"
        #: (fd, writable) -> the future of the task waiting on it (for notify_closing).
        self._waiters: dict[tuple[int, bool], asyncio.Future[None]] = {}

    def current_time(self) -> float:
        return asyncio.get_running_loop().time()

    async def sleep(self, seconds: float) -> None:
        await asyncio.sleep(seconds)

    async def sleep_until(self, when: float) -> None:
        await asyncio.sleep(max(0.0, when - asyncio.get_running_loop().time()))

    async def checkpoint(self) -> None:
        await asyncio.sleep(0)

    def event(self) -> asyncio.Event:
        return asyncio.Event()

    def cancel_scope(self, deadline: float = math.inf) -> Scope:
        return Scope(deadline)

    def move_on_after(self, seconds: float) -> Scope:
        return Scope(asyncio.get_running_loop().time() + seconds)

    def task_group(self) -> _TaskGroup:
        return _TaskGroup()

    def is_cancellation(self, exc: BaseException) -> bool:
        return isinstance(exc, asyncio.CancelledError)

    def stray_cancellation(self, exc: BaseException) -> bool:
        task = asyncio.current_task()
        ours = task is None or task.cancelling() > 0
        return isinstance(exc, asyncio.CancelledError) and not ours

    async def _wait(self, sock: Any, writable: bool) -> None:
        loop = asyncio.get_running_loop()
        fd = sock if isinstance(sock, int) else sock.fileno()
        if fd < 0:
            raise ResourceClosed
        key = (fd, writable)
        if key in self._waiters:
            # asyncio keeps one reader and one writer per fd: a second add_reader
            # would silently replace the first task's, which would then never wake.
            # trio raises BusyResourceError here; both loops raise ResourceBusy.
            raise ResourceBusy(
                f"another task is already waiting for fd {fd} to be "
                + ("writable" if writable else "readable")
            )
        future: asyncio.Future[None] = loop.create_future()

        def ready() -> None:
            if not future.done():
                future.set_result(None)

        add, remove = (
            (loop.add_writer, loop.remove_writer)
            if writable
            else (loop.add_reader, loop.remove_reader)
        )
        add(fd, ready)
        self._waiters[key] = future
        try:
            await future
        finally:
            if self._waiters.get(key) is future:
                del self._waiters[key]
                # Not after notify_closing: the fd may already be another socket's,
                # whose reader this would remove.
                with contextlib.suppress(ValueError, OSError):
                    remove(fd)

    async def wait_readable(self, sock: Any) -> None:
        await self._wait(sock, writable=False)

    async def wait_writable(self, sock: Any) -> None:
        await self._wait(sock, writable=True)

    def notify_closing(self, sock: Any) -> None:
        """The tasks waiting on the fd (one reading, one writing at most) are woken
        with ResourceClosed, and its reader and writer are removed, each on its own
        (a failure to remove one must not leave the other registered)."""
        fd = sock if isinstance(sock, int) else sock.fileno()
        for writable in (False, True):
            future = self._waiters.pop((fd, writable), None)
            if future is not None and not future.done():
                future.set_exception(ResourceClosed())
        loop = asyncio.get_running_loop()
        for remove in (loop.remove_reader, loop.remove_writer):
            with contextlib.suppress(ValueError, OSError):
                remove(fd)

    @contextlib.contextmanager
    def signal_receiver(self, *signals: int) -> Iterator[AsyncIterator[int]]:
        """With loop.add_signal_handler: on exit the signals go back to their default
        action (SIG_DFL), not to a handler set before."""
        loop = asyncio.get_running_loop()
        queue = Queue(self)
        for signum in signals:
            loop.add_signal_handler(signum, queue.put, signum)

        async def receive() -> AsyncIterator[int]:
            while True:
                yield await queue.get()

        try:
            yield receive()
        finally:
            for signum in signals:
                loop.remove_signal_handler(signum)

    async def open_transport(
        self, sock: Any, send_timeout: float, on_first_read: Callable[[], None] | None = None
    ) -> Transport:
        from .transport import open_transport

        return await open_transport(sock, send_timeout, on_first_read)

    async def open_tcp_stream(
        self, host: str, port: int, tls_hostname: str | None = None
    ) -> Stream:
        context = ssl.create_default_context() if tls_hostname is not None else None
        reader, writer = await asyncio.open_connection(
            host, port, ssl=context, server_hostname=tls_hostname
        )
        return _Stream(reader, writer)

    def thread_pool(self, size: int) -> _ThreadPool:
        return _ThreadPool(size)

    def run(self, main: Callable[..., Awaitable[T]], *args: Any) -> T:
        """In an asyncio.Runner, on a uvloop loop when this is the uvloop backend."""
        factory = None
        if self.uvloop:
            import uvloop

            factory = uvloop.new_event_loop
        with asyncio.Runner(loop_factory=factory) as runner:
            # `main` is an async function: main(*args) is a coroutine.
            return runner.run(main(*args))  # type: ignore[arg-type]


class _ThreadPool:
    def __init__(self, size: int) -> None:
        self._executor = ThreadPoolExecutor(size, thread_name_prefix="rrproxy-wsgi")
        self._loop: asyncio.AbstractEventLoop | None = None

    async def run(self, function: Callable[..., T], *args: Any) -> T:
        loop = self._loop = asyncio.get_running_loop()
        future = loop.run_in_executor(self._executor, function, *args)
        # A thread cannot be stopped: if we are cancelled, still wait for it (shielded)
        # so the request's state is not torn down under the running app.
        try:
            return await asyncio.shield(future)
        except asyncio.CancelledError:
            with contextlib.suppress(BaseException):
                await future
            raise

    def call_soon(self, function: Callable[..., Any], *args: Any) -> None:
        assert self._loop is not None
        self._loop.call_soon_threadsafe(function, *args)

    def call_async(self, function: Callable[..., Awaitable[T]], *args: Any) -> T:
        assert self._loop is not None
        # `function` is an async function: function(*args) is a coroutine.
        return asyncio.run_coroutine_threadsafe(function(*args), self._loop).result()  # type: ignore[arg-type]


def make_backend(loop: str) -> AsyncioBackend:
    """ "asyncio", or "uvloop" (ImportError if it is not installed)."""
    if loop == "uvloop":
        import uvloop  # noqa: F401

        return AsyncioBackend(use_uvloop=True)
    return AsyncioBackend(use_uvloop=False)
