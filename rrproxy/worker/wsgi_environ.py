"""The WSGI side of PEP 3333 that needs no thread and no socket: the `environ` built
from a request, and the objects it carries (`wsgi.input`, `wsgi.errors`,
`wsgi.file_wrapper`). `wsgi.py` runs the app with them."""

from __future__ import annotations

import io
import logging
import os
import stat
from collections.abc import Callable, Iterable
from typing import TYPE_CHECKING, Any
from urllib.parse import unquote_to_bytes

import h11

if TYPE_CHECKING:
    from .connection import HTTPConnection

log = logging.getLogger("rrproxy.wsgi")


class FileWrapper:
    """`wsgi.file_wrapper`: a file the loop sends with os.sendfile (falls back to
    reading blocks for objects without a real file descriptor)."""

    def __init__(self, file: Any, block_size: int = 8192) -> None:
        self.file = file
        self.block_size = block_size

    def __iter__(self) -> Any:
        read = self.file.read
        while True:
            block = read(self.block_size)
            if not block:
                return
            yield block

    def close(self) -> None:
        """Close the wrapped file (PEP 3333: the server calls close() on the iterable)."""
        close = getattr(self.file, "close", None)
        if close is not None:
            close()


def sendfile_offset(file: Any) -> int | None:
    """Where to start sending a regular file from; None for anything else (a pipe, a socket,
    a BytesIO), which FileWrapper then reads block by block (as gunicorn; a pipe's tell()
    raised, a 500)."""
    try:
        if not stat.S_ISREG(os.fstat(file.fileno()).st_mode):
            return None
        return file.tell() if hasattr(file, "tell") else 0
    except (AttributeError, OSError, ValueError):
        return None


def file_size(file: Any, offset: int) -> int:
    """The bytes of a regular file from `offset` on."""
    return max(0, os.fstat(file.fileno()).st_size - offset)


class WSGIInput(io.RawIOBase):
    """`wsgi.input`: the buffered start of the body, then more from the loop."""

    def __init__(self, initial: bytes, more: Callable[[], bytes | None] | None) -> None:
        self._buffer = bytearray(initial)
        self._more = more

    def readable(self) -> bool:
        """Always True: wsgi.input is a readable stream."""
        return True

    def _fill(self) -> bool:
        if self._more is None:
            return False
        chunk = self._more()
        if chunk is None:
            self._more = None
            return False
        self._buffer += chunk
        return True

    def read(self, size: int | None = -1) -> bytes:
        """Up to `size` bytes of the body (all of it when size is -1 or None)."""
        if size is None or size < 0:
            while self._fill():
                pass
            size = len(self._buffer)
        while len(self._buffer) < size and self._fill():
            pass
        data = bytes(self._buffer[:size])
        del self._buffer[:size]
        return data

    def readline(self, size: int | None = -1) -> bytes:
        """One line of the body, at most `size` bytes."""
        limit = size if size is not None and size >= 0 else None
        while True:
            end = self._buffer.find(b"\n")
            if end >= 0 or (limit is not None and len(self._buffer) >= limit):
                break
            if not self._fill():
                break
        cut = end + 1 if end >= 0 else len(self._buffer)
        if limit is not None:
            cut = min(cut, limit)
        data = bytes(self._buffer[:cut])
        del self._buffer[:cut]
        return data

    def readlines(self, hint: int = -1) -> list[bytes]:
        """The remaining lines of the body (stopping after `hint` bytes, if given)."""
        lines: list[bytes] = []
        total = 0
        while True:
            line = self.readline()
            if not line:
                return lines
            lines.append(line)
            total += len(line)
            if 0 < hint <= total:
                return lines

    def __iter__(self) -> Any:
        return iter(self.readline, b"")


class _ErrorStream:
    """`wsgi.errors`: lines to the worker's log."""

    def write(self, text: str) -> int:
        for line in text.rstrip("\n").splitlines():
            log.error("%s", line)
        return len(text)

    def writelines(self, lines: Iterable[str]) -> None:
        for line in lines:
            self.write(line)

    def flush(self) -> None:
        pass


_ERRORS = _ErrorStream()


def build_environ(
    connection: HTTPConnection, request: h11.Request, body: WSGIInput, threads: int
) -> dict[str, Any]:
    """The PEP 3333 environ for a request: CGI variables, HTTP_* headers (names with underscores
    dropped, as gunicorn does), wsgi.* keys, and the scheme from TLS or a trusted X-Forwarded-
    Proto."""
    config = connection.server.config
    raw_path, _, query = request.target.partition(b"?")
    if raw_path[:1] != b"/" and b"://" in raw_path:
        rest = raw_path.split(b"://", 1)[1]
        slash = rest.find(b"/")
        raw_path = rest[slash:] if slash >= 0 else b"/"
    path = unquote_to_bytes(raw_path).decode("latin-1")
    root = config.root_path
    if root and (path == root or path.startswith(root + "/")):
        path = path[len(root) :]
    server = connection.server_address() or (config.bind_host or "localhost", config.bind_port)
    client = connection.effective_client(request)
    scheme = "https" if connection.server.tls_context is not None else "http"
    environ: dict[str, Any] = {
        "REQUEST_METHOD": request.method.decode("latin-1"),
        "SCRIPT_NAME": root,
        "PATH_INFO": path,
        "QUERY_STRING": query.decode("latin-1"),
        "RAW_URI": request.target.decode("latin-1"),
        "SERVER_NAME": str(server[0]),
        "SERVER_PORT": str(server[1]),
        "SERVER_PROTOCOL": "HTTP/" + request.http_version.decode("latin-1"),
        "REMOTE_ADDR": client[0] if client else "",
        "REMOTE_PORT": str(client[1]) if client else "",
        "wsgi.version": (1, 0),
        "wsgi.input": body,
        "wsgi.errors": _ERRORS,
        "wsgi.multithread": threads > 1,
        "wsgi.multiprocess": True,
        "wsgi.run_once": False,
        "wsgi.input_terminated": True,
        "wsgi.file_wrapper": FileWrapper,
    }
    for name, value in connection.core.headers:
        if b"_" in name:
            continue  # X_Forwarded_For must not pass for X-Forwarded-For (gunicorn drops it too)
        text = value.decode("latin-1")
        if name == b"content-type":
            environ["CONTENT_TYPE"] = text
            continue
        if name == b"content-length":
            environ["CONTENT_LENGTH"] = text
            continue
        trusted = name == b"x-forwarded-proto" and connection.trust_forwarded
        if trusted and value.lower() == b"https":
            scheme = "https"
        key = "HTTP_" + name.decode("latin-1").upper().replace("-", "_")
        environ[key] = environ[key] + "," + text if key in environ else text
    environ["wsgi.url_scheme"] = scheme
    return environ


__all__ = ["FileWrapper", "WSGIInput", "build_environ", "file_size", "sendfile_offset"]
