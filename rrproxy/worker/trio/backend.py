"""The Backend interface on trio: mostly trio itself, no layer in between."""

from __future__ import annotations

import math
import socket
import ssl
from collections.abc import AsyncIterator, Awaitable, Callable
from contextlib import AbstractContextManager
from typing import Any, TypeVar

import trio

from ..backend import FileLike, ResourceBusy, ResourceClosed, Stream, Transport

T = TypeVar("T")


class _TaskGroup:
    __slots__ = ("_manager", "_nursery")

    def __init__(self) -> None:
        self._manager = trio.open_nursery()
        self._nursery: trio.Nursery | None = None

    async def __aenter__(self) -> _TaskGroup:
        self._nursery = await self._manager.__aenter__()
        return self

    async def __aexit__(self, *exc: Any) -> bool | None:
        return await self._manager.__aexit__(*exc)

    def start_soon(self, function: Callable[..., Awaitable[Any]], *args: Any) -> None:
        assert self._nursery is not None
        self._nursery.start_soon(function, *args)

    def cancel(self) -> None:
        assert self._nursery is not None
        self._nursery.cancel_scope.cancel()


class TrioBackend:
    """The Backend on trio: its functions as they are (trio.CancelScope is the
    CancelScope, trio.Event the Event), wrapped only where the interface differs."""

    name = "trio"
    current_time = staticmethod(trio.current_time)
    sleep = staticmethod(trio.sleep)
    sleep_until = staticmethod(trio.sleep_until)
    checkpoint = staticmethod(trio.lowlevel.checkpoint)
    event = staticmethod(trio.Event)
    move_on_after = staticmethod(trio.move_on_after)
    notify_closing = staticmethod(trio.lowlevel.notify_closing)

    @staticmethod
    def cancel_scope(deadline: float = math.inf) -> trio.CancelScope:
        return trio.CancelScope(deadline=deadline)

    @staticmethod
    def task_group() -> _TaskGroup:
        return _TaskGroup()

    @staticmethod
    def is_cancellation(exc: BaseException) -> bool:
        return isinstance(exc, trio.Cancelled)

    @staticmethod
    def stray_cancellation(exc: BaseException) -> bool:
        return False

    @staticmethod
    async def wait_readable(sock: FileLike) -> None:
        try:
            await trio.lowlevel.wait_readable(sock)
        except trio.ClosedResourceError:
            raise ResourceClosed from None
        except trio.BusyResourceError as exc:
            raise ResourceBusy(str(exc)) from None

    @staticmethod
    async def wait_writable(sock: FileLike) -> None:
        try:
            await trio.lowlevel.wait_writable(sock)
        except trio.ClosedResourceError:
            raise ResourceClosed from None
        except trio.BusyResourceError as exc:
            raise ResourceBusy(str(exc)) from None

    @staticmethod
    def signal_receiver(*signals: int) -> AbstractContextManager[AsyncIterator[int]]:
        return trio.open_signal_receiver(*signals)

    @staticmethod
    async def open_transport(
        sock: socket.socket, send_timeout: float, on_first_read: Callable[[], None] | None = None
    ) -> Transport:
        from .transport import TrioTransport

        return TrioTransport(sock, send_timeout, on_first_read)

    @staticmethod
    async def open_tcp_stream(host: str, port: int, tls_hostname: str | None = None) -> Stream:
        stream: trio.abc.Stream = await trio.open_tcp_stream(host, port)
        if tls_hostname is not None:
            stream = trio.SSLStream(
                stream, ssl.create_default_context(), server_hostname=tls_hostname
            )
        # trio.abc.Stream allows receive_some() to return a bytearray; SocketStream's
        # and SSLStream's return bytes.
        return stream  # type: ignore[return-value]

    @staticmethod
    def thread_pool(size: int) -> _ThreadPool:
        return _ThreadPool(size)

    @staticmethod
    def run(main: Callable[..., Awaitable[T]], *args: Any) -> T:
        return trio.run(main, *args)


class _ThreadPool:
    def __init__(self, size: int) -> None:
        self._limiter = trio.CapacityLimiter(size)
        self._token: trio.lowlevel.TrioToken | None = None

    async def run(self, function: Callable[..., T], *args: Any) -> T:
        if self._token is None:
            self._token = trio.lowlevel.current_trio_token()
        # abandon_on_cancel=False: a thread cannot be stopped, so its caller waits for
        # it whatever happens (the thread's own writes notice a gone client).
        return await trio.to_thread.run_sync(function, *args, limiter=self._limiter)

    def call_soon(self, function: Callable[..., Any], *args: Any) -> None:
        assert self._token is not None
        self._token.run_sync_soon(function, *args)

    def call_async(self, function: Callable[..., Awaitable[T]], *args: Any) -> T:
        return trio.from_thread.run(function, *args, trio_token=self._token)


BACKEND = TrioBackend()
