"""WSGI (PEP 3333): the app runs in the worker's pool of --threads threads, as in
gunicorn's gthread worker, while the worker's event loop does every byte of socket
I/O: keep-alive, pipelining, limits, timeouts, slow clients and the disconnect sweep
never hold a thread.

A request reaches a thread once its head and the first BUFFERED_BODY bytes of its
body have arrived (the whole body, for most requests); a larger body streams into
`wsgi.input` from the loop as the app reads it, and then the thread waits for the
client. The response goes the other way: the thread hands chunks to the loop, which
writes them; a small response leaves in one write with its head and a
Content-Length, a streamed one as it comes (the thread may run STREAM_AHEAD bytes
ahead of the client, then waits).
"""

from __future__ import annotations

import logging
import re
import threading
import time
from collections.abc import Callable
from typing import TYPE_CHECKING, Any

import h11

from ..errors import BodyTooLarge, ClientDisconnected, MalformedBody
from ..protocol.http import has_header
from ..protocol.http11 import InvalidResponse
from .native_response import internal_error, send_response
from .wsgi_environ import FileWrapper, WSGIInput, build_environ, file_size, sendfile_offset

if TYPE_CHECKING:
    from .backend import Backend, ThreadPool
    from .connection import HTTPConnection

log = logging.getLogger("rrproxy.wsgi")

#: Body bytes read on the loop before the app runs (a slow client costs no thread).
BUFFERED_BODY = 1024 * 1024
#: Response bytes a thread may produce ahead of what the client has taken.
STREAM_AHEAD = 256 * 1024
_STATUS = re.compile(r"[1-9][0-9]{2} [^\r\n]*")
_FILE_CHUNK = 1024 * 1024


class Exchange:
    """One request's response, handed from the app's thread to the loop."""

    def __init__(
        self, connection: HTTPConnection, pool: ThreadPool, backend: Backend, head: bool = False
    ) -> None:
        self.connection = connection
        #: A HEAD request: a file's size is taken, and the file closed, in the app's thread.
        self.head = head
        self.pool = pool
        self.backend = backend
        self.lock = threading.Lock()
        self.room = threading.Condition(self.lock)
        self.status: int = 0
        self.headers: list[tuple[bytes, bytes]] = []
        self.chunks: list[bytes] = []
        self.file: tuple[Any, int] | None = None
        self.file_size: int | None = None
        self._file_closed = False
        self.buffered = 0
        self.head_sent = False
        self.done = False
        self.error: BaseException | None = None
        self.cancelled = False
        self._notified = False
        self._wake = backend.event()

    # --- in the app's thread --------------------------------------------------------

    def start_response(
        self, status: str, headers: list[tuple[str, str]], exc_info: Any = None
    ) -> Callable[[bytes], None]:
        """PEP 3333's start_response, called by the app in its thread; returns the
        legacy write()."""
        if exc_info is not None:
            with self.lock:
                # Body bytes already written belong to the first head: they must not
                # go out under the error's (gunicorn sends the head at the first write).
                if self.head_sent or self.chunks:
                    raise exc_info[1].with_traceback(exc_info[2])
        elif self.status:
            raise RuntimeError("start_response called a second time without exc_info")
        if not isinstance(status, str) or not _STATUS.fullmatch(status):
            raise ValueError(f"invalid WSGI status {status!r}")
        encoded = []
        for pair in headers:
            if not (
                isinstance(pair, tuple) and len(pair) == 2 and all(isinstance(x, str) for x in pair)
            ):
                raise TypeError(f"WSGI headers are (str, str) pairs, got {pair!r}")
            # Stripped as gunicorn does: Django's Set-Cookie values start with a space
            # (SimpleCookie.output(header="")), which h11 rightly refuses on the wire.
            name, value = pair[0].strip().encode("latin-1"), pair[1].strip(" \t").encode("latin-1")
            encoded.append((name.lower(), value))
        with self.lock:
            self.status = int(status[:3])
            self.headers = encoded
        return self.write

    def write(self, data: bytes) -> None:
        """The legacy write() callable: hand a body chunk to the loop, waiting while STREAM_AHEAD
        bytes are not yet sent."""
        if not isinstance(data, bytes | bytearray):
            raise TypeError(f"WSGI body chunks are bytes, got {type(data).__name__}")
        if not self.status:
            raise RuntimeError("body data before start_response")
        if not data:
            return
        with self.room:
            while self.buffered > STREAM_AHEAD and not self.cancelled:
                self.room.wait()
            if self.cancelled:
                raise ClientDisconnected("the client went away")
            self.chunks.append(bytes(data))
            self.buffered += len(data)
            self._notify_locked()

    def run_app(self, app: Callable[..., Any], environ: dict[str, Any]) -> None:
        """Call the app in a pool thread and pass what it returns to the loop, closing the iterable
        as PEP 3333 requires."""
        result = None
        try:
            result = app(environ, self.start_response)
            file = getattr(result, "file", None) if isinstance(result, FileWrapper) else None
            with self.lock:  # (after write() calls, the head is out without a length)
                fresh = not self.head_sent and not self.chunks
            offset = sendfile_offset(file) if file is not None and fresh else None
            if offset is not None and self.status:
                if self.head or self.status in (204, 304):
                    # No body goes out: only the size is needed, and close() (PEP 3333;
                    # Django's sends request_finished) runs below, in this thread.
                    self.file_size = file_size(file, offset)
                    return
                self.file = (file, offset)
                return
            for chunk in result:
                self.write(chunk)
            if not self.status:
                raise RuntimeError("the app returned without calling start_response")
        except BaseException as exc:
            self.error = exc
        finally:
            try:
                close = getattr(result, "close", None)
                if close is not None and self.file is None:
                    close()
            except BaseException as exc:  # PEP 3333: close() is always called
                self.error = self.error or exc
            with self.lock:
                self.done = True
                self._notify_locked()

    def _notify_locked(self) -> None:
        if not self._notified:
            self._notified = True
            self.pool.call_soon(self._wake.set)

    # --- on the loop ---------------------------------------------------------------

    def cancel(self) -> None:
        """The client left or the worker stops: a thread waiting to write wakes up and gives up."""
        with self.room:
            self.cancelled = True
            self.room.notify_all()

    async def deliver(self, head: bool) -> bool:
        """Write what the thread produces as it comes; True if the connection may
        carry another request."""
        try:
            return await self._deliver(head)
        finally:
            if self.file is not None and not self._file_closed:
                # The file never went out (the head was refused, the client left):
                # close() is still owed to the app.
                self._file_closed = True
                try:
                    self.file[0].close()
                except Exception:
                    log.exception("closing the WSGI app's file raised")

    async def _deliver(self, head: bool) -> bool:
        connection = self.connection
        core = connection.core
        sent_total = 0
        size: int | None = None
        while True:
            await self._wake.wait()
            with self.lock:
                self._wake = self.backend.event()
                self._notified = False
                chunks, self.chunks = self.chunks, []
                done, error, file = self.done, self.error, self.file
                first = not self.head_sent and bool(chunks or done)
                if first and error is None:
                    self.head_sent = True
            if not self.head_sent:
                if error is not None:
                    return await self._fail(error)
                continue  # nothing to write yet
            data = b"".join(chunks)
            try:
                out = b""
                if first:
                    headers = self.headers
                    chunked = has_header(headers, b"transfer-encoding")
                    size = file_size(*file) if file is not None else self.file_size
                    declared = _content_length(headers)
                    if size is not None and declared is None and self.status not in (204, 304):
                        headers.append((b"content-length", b"%d" % size))
                    elif size is not None and declared is not None:
                        size = min(size, declared)  # as gunicorn: never past its own length
                    if done and error is None and file is None and not chunked:
                        # The common case: the whole response, one write, Content-Length.
                        out = core.response(
                            self.status, headers, data, head=head, close=connection.server.draining
                        )
                        await self._send(out, len(data))
                        connection.finished(self.status, 0 if head else len(data))
                        return True
                    out = core.response(
                        self.status, headers, None, head=head, close=connection.server.draining
                    )
                if data and not head:
                    out += core.chunk(data)
                if done and error is not None:
                    log.error("WSGI app failed after the head went out: %r", error)
                    if out:
                        await self._send(out, len(data))
                    sent_total += len(data)
                    connection.finished(self.status, 0 if head else sent_total)
                    return False  # closing without the end tells the client
                if done and file is not None:
                    await self._send(out, 0)
                    out = b""
                    first = False  # the head is out: no 500 can follow any more
                    count = file_size(*file) if size is None else size
                    sent_total += await self._send_file(file[0], file[1], count)
                if done:
                    out += core.end()
            except InvalidResponse as exc:
                if first:
                    log.error("invalid response from the WSGI app: %s", exc)
                    return await connection.send_error(500, written=False)
                log.error("WSGI response broke its own framing: %s", exc)
                return False
            await self._send(out, len(data))
            sent_total += len(data)
            if done:
                connection.finished(self.status, 0 if head else sent_total)
                return True

    async def _send(self, data: bytes, produced: int) -> None:
        """Write, then give the thread room for what it produced."""
        try:
            if data:
                await self.connection.send(data)
        except ClientDisconnected:
            self.cancel()
            raise
        if produced:
            with self.room:
                self.buffered -= produced
                self.room.notify_all()

    async def _send_file(self, file: Any, offset: int, size: int) -> int:
        io_ = self.connection.io
        assert io_ is not None
        try:
            sent = await io_.sendfile(file, offset, size)
        finally:
            self._file_closed = True
            await self.pool.run(file.close)
        self.connection.core.sent_elsewhere(sent)
        return sent

    async def _fail(self, error: BaseException) -> bool:
        connection = self.connection
        if isinstance(error, BodyTooLarge):
            return await connection.send_error(413)
        if isinstance(error, MalformedBody):
            return await connection.send_error(error.status)
        if isinstance(error, ClientDisconnected):
            raise error
        log.error(
            "WSGI app failed: %s",
            "".join(_format(error)) if not isinstance(error, ValueError | TypeError) else error,
        )
        response = internal_error(connection, error)
        return await send_response(connection, response, False)


def _format(error: BaseException) -> list[str]:
    import traceback

    return traceback.format_exception(error)


def _content_length(headers: list[tuple[bytes, bytes]]) -> int | None:
    for name, value in headers:
        if name == b"content-length" and value.strip().isdigit():
            return int(value)
    return None


class WSGIAdapter:
    """Serves requests with a WSGI app in a pool of threads."""

    def __init__(self, app: Callable[..., Any], backend: Backend, threads: int) -> None:
        self.app = app
        self.backend = backend
        self.threads = threads
        self.pool = backend.thread_pool(threads)
        #: When each app call started in its thread (time.monotonic(), for the stuck-pool
        #: heartbeat rule).
        self.running: dict[int, float] = {}
        self._ids = 0

    def stuck(self, after: float) -> bool:
        """Every thread has been busy with one request for more than `after` seconds:
        the worker stops its heartbeat so the front can replace it."""
        started = list(self.running.values())  # (threads add to it: one C call copies it)
        return len(started) >= self.threads and max(started) < time.monotonic() - after

    async def serve(self, connection: HTTPConnection, request: h11.Request) -> bool:
        """Read up to BUFFERED_BODY bytes of the body on the loop, run the app in a pool thread, and
        write what it produces; True if the connection may go on."""
        parts: list[bytes] = []
        size = 0
        complete = False
        try:
            while size < BUFFERED_BODY:
                chunk = await connection.read_body_chunk()
                if chunk is None:
                    complete = True
                    break
                parts.append(chunk)
                size += len(chunk)
        except BodyTooLarge:
            return await connection.send_error(413)
        except MalformedBody as exc:
            return await connection.send_error(exc.status)
        pool = self.pool
        more = None if complete else lambda: pool.call_async(self._read_more, connection)
        body = WSGIInput(b"".join(parts), more)
        environ = build_environ(connection, request, body, self.threads)
        exchange = Exchange(connection, pool, self.backend, request.method == b"HEAD")
        self._ids += 1
        job = self._ids
        async with self.backend.task_group() as tasks:
            tasks.start_soon(self._run, job, exchange, environ)
            try:
                return await exchange.deliver(request.method == b"HEAD")
            except BaseException:
                exchange.cancel()
                raise

    async def _read_more(self, connection: HTTPConnection) -> bytes | None:
        """The next piece of the body, for wsgi.input in the app's thread. This runs outside the
        connection's cancel scope (a task of its own under asyncio; trio does not cancel it
        either): its own deadline, or a client stalled mid-body held the thread forever."""
        timeout = connection.server.config.header_timeout
        with self.backend.move_on_after(timeout):
            return await connection.read_body_chunk()
        raise ClientDisconnected(f"no more of the body for {timeout:g} s (--header-timeout)")

    async def _run(self, job: int, exchange: Exchange, environ: dict[str, Any]) -> None:
        try:
            await self.pool.run(self._call, job, exchange, environ)
        finally:
            self.running.pop(job, None)

    def _call(self, job: int, exchange: Exchange, environ: dict[str, Any]) -> None:
        # Timed from here, in the thread: a request waiting for a thread is not running
        # (counted from its arrival, a stream of newcomers kept a stuck pool looking busy).
        self.running[job] = time.monotonic()
        exchange.run_app(self.app, environ)


__all__ = ["Exchange", "WSGIAdapter"]
