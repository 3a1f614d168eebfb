"""A client connection on asyncio: a Protocol (the loop reads into it in C with
uvloop, as uvicorn's transports do) with a small buffer the connection logic pulls
from. Reading pauses when the buffer holds HIGH_WATER bytes nobody asked for yet, so
a request body is still read from the socket only as the app wants it."""

from __future__ import annotations

import asyncio
import contextlib
import os
import socket
from collections import deque
from collections.abc import Callable
from typing import Any

from ...native import ClientDisconnected
from ..backend import inet_address

HIGH_WATER = 64 * 1024
_FILE_BLOCK = 256 * 1024


class _Protocol(asyncio.Protocol):
    def __init__(self, on_first_read: Callable[[], None] | None) -> None:
        self.on_first_read = on_first_read
        self.transport: asyncio.Transport | None = None
        self.buffer: deque[bytes] = deque()
        self.buffered = 0
        self.eof = False
        self.reading_paused = False
        self.writing_paused = False
        self.waiter: asyncio.Future[None] | None = None
        self.drained: asyncio.Future[None] | None = None

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        # A stream connection's transport: an asyncio.Transport (read and write).
        self.transport = transport  # type: ignore[assignment]

    def _wake(self) -> None:
        waiter = self.waiter
        if waiter is not None:
            self.waiter = None
            if not waiter.done():
                waiter.set_result(None)

    def data_received(self, data: bytes) -> None:
        if self.on_first_read is not None:
            callback, self.on_first_read = self.on_first_read, None
            callback()
        self.buffer.append(data)
        self.buffered += len(data)
        if self.buffered >= HIGH_WATER and not self.reading_paused and self.transport:
            self.reading_paused = True
            self.transport.pause_reading()
        self._wake()

    def eof_received(self) -> bool:
        self.eof = True
        self._wake()
        return True  # keep our sending side open: a half-closed client still gets its answer

    def connection_lost(self, exc: Exception | None) -> None:
        self.eof = True
        self._wake()
        drained = self.drained
        if drained is not None and not drained.done():
            drained.set_result(None)

    def pause_writing(self) -> None:
        self.writing_paused = True

    def resume_writing(self) -> None:
        self.writing_paused = False
        drained = self.drained
        if drained is not None and not drained.done():
            drained.set_result(None)


class AsyncioTransport:
    """A Transport over the loop's transport and our _Protocol: reads come from the
    protocol's buffer, writes go to the loop's transport with its flow control."""

    __slots__ = ("_loop", "_protocol", "_send_timeout", "_server_address", "_transport", "client")

    def __init__(
        self,
        transport: asyncio.Transport,
        protocol: _Protocol,
        send_timeout: float,
    ) -> None:
        self._transport = transport
        self._protocol = protocol
        self._send_timeout = send_timeout
        self._loop = asyncio.get_running_loop()
        self.client: tuple[str, int] | None = inet_address(transport.get_extra_info("peername"))
        self._server_address: tuple[str, int] | None = None

    def server_address(self) -> tuple[str, int] | None:
        if self._server_address is None:
            self._server_address = inet_address(self._transport.get_extra_info("sockname"))
        return self._server_address

    async def receive(self) -> bytes:
        """Everything buffered so far in one piece (waiting if nothing is), and
        reading resumed if the buffer had paused it."""
        protocol = self._protocol
        while not protocol.buffer:
            if protocol.eof:
                return b""
            waiter = self._loop.create_future()
            protocol.waiter = waiter
            await waiter
        buffer = protocol.buffer
        data = buffer.popleft() if len(buffer) == 1 else b"".join(buffer)
        buffer.clear()
        protocol.buffered = 0
        if protocol.reading_paused and not protocol.eof:
            protocol.reading_paused = False
            self._transport.resume_reading()
        return data

    async def send(self, data: bytes) -> None:
        """Hand `data` to the loop's transport; wait only while the transport has
        paused writing (its buffer above the high-water mark)."""
        protocol = self._protocol
        transport = self._transport
        if transport.is_closing():
            raise ClientDisconnected("client went away")
        transport.write(data)
        if protocol.writing_paused:
            # A client that takes none of our bytes for --send-timeout is gone.
            protocol.drained = self._loop.create_future()
            try:
                async with asyncio.timeout(self._send_timeout):
                    await protocol.drained
            except TimeoutError:
                raise ClientDisconnected("client took no response bytes in time") from None
            finally:
                protocol.drained = None
            if transport.is_closing():
                raise ClientDisconnected("client went away")

    async def sendfile(self, file: Any, offset: int, count: int) -> int:
        """loop.sendfile() on the stdlib loop (given at least 1 MB/s beyond the send
        timeout); on uvloop, blocks read in a thread and sent as send() does."""
        if self._transport.is_closing():
            raise ClientDisconnected("client went away")
        if type(self._loop).__module__.startswith("asyncio"):
            try:
                # os.sendfile under the stdlib's selector transports.
                async with asyncio.timeout(self._send_timeout + count / 1e6):
                    return await self._loop.sendfile(self._transport, file, offset, count)
            except (TimeoutError, ConnectionError, OSError, RuntimeError) as exc:
                raise ClientDisconnected(f"sending a file failed: {exc}") from None
        # uvloop has no sendfile for its transports: blocks read in a thread (the disk
        # never blocks the loop), written with the usual backpressure.
        fd = file.fileno()
        sent = 0
        while sent < count:
            size = min(_FILE_BLOCK, count - sent)
            block = await self._loop.run_in_executor(None, os.pread, fd, size, offset + sent)
            if not block:
                break
            await self.send(block)
            sent += len(block)
        return sent

    def client_gone(self) -> bool:
        """No syscall: whether the loop has seen EOF or lost the connection."""
        return self._protocol.eof

    def shutdown_write(self) -> None:
        with contextlib.suppress(OSError, RuntimeError, NotImplementedError):
            if self._transport.can_write_eof():
                self._transport.write_eof()

    def close(self) -> None:
        protocol = self._protocol
        if protocol.on_first_read is not None:
            # Given up before its first read: the front still waits for an answer.
            callback, protocol.on_first_read = protocol.on_first_read, None
            callback()
        self._transport.close()


async def open_transport(
    sock: socket.socket, send_timeout: float, on_first_read: Callable[[], None] | None
) -> AsyncioTransport:
    """Hand a connected socket to the running loop (connect_accepted_socket) and wrap
    it; Backend.open_transport on asyncio."""
    # Trap: a socket rebuilt from a received fd may not carry its protocol, and
    # without TCP_NODELAY, Nagle plus delayed ACK adds ~40 ms per response.
    with contextlib.suppress(OSError):
        sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
    loop = asyncio.get_running_loop()
    protocol = _Protocol(on_first_read)
    transport: Any
    transport, _ = await loop.connect_accepted_socket(lambda: protocol, sock)
    return AsyncioTransport(transport, protocol, send_timeout)
