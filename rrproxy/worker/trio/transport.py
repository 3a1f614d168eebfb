"""A client connection on trio: the socket driven directly (nonblocking calls; trio
only waits on EAGAIN), one syscall per read and per response on the hot path."""

from __future__ import annotations

import os
import socket
from collections.abc import Callable
from typing import Any

import trio

from ...native import ClientDisconnected
from ..backend import inet_address

RECV_SIZE = 64 * 1024


class TrioTransport:
    """A Transport on a connected, nonblocking socket: each call tries the syscall
    first and waits with trio only when it would block."""

    __slots__ = ("_on_first_read", "_send_timeout", "_server_address", "client", "sock")

    def __init__(
        self,
        sock: socket.socket,
        send_timeout: float,
        on_first_read: Callable[[], None] | None = None,
    ) -> None:
        sock.setblocking(False)
        self.sock = sock
        self._send_timeout = send_timeout
        self._on_first_read = on_first_read
        self._server_address: tuple[str, int] | None = None
        try:
            self.client: tuple[str, int] | None = inet_address(sock.getpeername())
        except OSError:
            self.client = None

    def server_address(self) -> tuple[str, int] | None:
        if self._server_address is None:
            try:
                self._server_address = inet_address(self.sock.getsockname())
            except OSError:
                return None
        return self._server_address

    async def receive(self) -> bytes:
        """One recv() of up to RECV_SIZE bytes, waiting only if none are there yet."""
        sock = self.sock
        while True:
            try:
                data = sock.recv(RECV_SIZE)
                break
            except BlockingIOError:
                await trio.lowlevel.wait_readable(sock)
            except OSError:  # reset by peer and friends: same as EOF for us
                data = b""
                break
        if self._on_first_read is not None:
            self.first_read_done()
        return data

    def first_read_done(self) -> None:
        """Run the `on_first_read` callback if it has not run yet (and never again):
        the front is told the connection is taken exactly once."""
        callback, self._on_first_read = self._on_first_read, None
        if callback is not None:
            callback()

    async def send(self, data: bytes) -> None:
        sock = self.sock
        view: Any = data
        while view:
            try:
                sent = sock.send(view)
            except BlockingIOError:
                # A client that takes none of our bytes for --send-timeout is gone.
                with trio.move_on_after(self._send_timeout):
                    await trio.lowlevel.wait_writable(sock)
                    continue
                raise ClientDisconnected("client took no response bytes in time") from None
            except OSError as exc:
                raise ClientDisconnected(f"client went away: {exc}") from None
            if sent == len(view):
                return
            view = memoryview(view)[sent:]

    async def sendfile(self, file: Any, offset: int, count: int) -> int:
        """os.sendfile() straight to the socket; fewer than `count` bytes if the file
        turns out shorter."""
        sock = self.sock
        sent = 0
        while sent < count:
            try:
                n = os.sendfile(sock.fileno(), file.fileno(), offset + sent, count - sent)
            except BlockingIOError:
                with trio.move_on_after(self._send_timeout):
                    await trio.lowlevel.wait_writable(sock)
                    continue
                raise ClientDisconnected("client took no response bytes in time") from None
            except OSError as exc:
                raise ClientDisconnected(f"client went away: {exc}") from None
            if n == 0:
                break  # the file is shorter than announced
            sent += n
        return sent

    def client_gone(self) -> bool:
        """A peek at the socket (one syscall): EOF or an error means gone."""
        try:
            return self.sock.recv(1, socket.MSG_PEEK) == b""
        except BlockingIOError:
            return False
        except OSError:
            return True

    def shutdown_write(self) -> None:
        try:
            self.sock.shutdown(socket.SHUT_WR)
        except OSError:
            pass

    def close(self) -> None:
        # A connection given up before its first read still owes the front an
        # answer, or the front would hold its copy of the fd forever.
        self.first_read_done()
        try:
            trio.lowlevel.notify_closing(self.sock)
        except (AttributeError, TypeError):
            pass
        try:
            self.sock.close()
        except OSError:
            pass
