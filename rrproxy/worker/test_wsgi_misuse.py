"""WSGI apps that misuse the server, through test_connection.py's memory transport (a
real pool of threads): `wsgi.file_wrapper` files are always closed and never sent past
their response's length, and start_response(exc_info) never puts a body under another
head."""

from __future__ import annotations

import os
import sys
import tempfile
import threading
import time
from typing import Any

import pytest

from .backend import Backend
from .test_connection import BACKENDS, GET, MemoryTransport, run_connection, serve
from .wsgi import BUFFERED_BODY, WSGIAdapter

HEAD = b"HEAD /a HTTP/1.1\r\nHost: x\r\n\r\n"


class FileTransport(MemoryTransport):
    """A memory transport with sendfile (it reads the file)."""

    async def sendfile(self, file: Any, offset: int, count: int) -> int:
        data = os.pread(file.fileno(), count, offset)
        self.sent.append(data)
        return len(data)


def written(backend: Backend, pieces: list[bytes], app: Any) -> bytes:
    """Everything the server wrote for `pieces`, raw (HEAD responses included)."""
    transport = FileTransport(backend, pieces)
    adapter = WSGIAdapter(app, backend, 2)
    run_connection(backend, transport, app, adapter, keep_alive=0.3, header_timeout=0.3)
    return b"".join(transport.sent)


def file_app(files: list[Any], headers: list[tuple[str, str]]) -> Any:
    def app(environ: dict[str, Any], start_response: Any) -> Any:
        file = tempfile.TemporaryFile()  # noqa: SIM115  # the server must close it
        file.write(b"filedata")
        file.seek(0)
        files.append(file)
        start_response("200 OK", headers)
        return environ["wsgi.file_wrapper"](file)

    return app


@pytest.mark.parametrize("backend", BACKENDS, ids=lambda b: b.name)
def test_a_file_answering_head_is_closed_and_gives_its_size(backend: Backend) -> None:
    # HEAD skipped the sendfile that closed the file: close() (PEP 3333; Django's
    # FileResponse sends request_finished from it) was never called.
    files: list[Any] = []
    out = written(backend, [HEAD, HEAD], file_app(files, []))
    assert out.count(b"HTTP/1.1 200 OK\r\n") == 2
    assert out.count(b"content-length: 8\r\n") == 2
    assert b"filedata" not in out
    assert [file.closed for file in files] == [True, True]


@pytest.mark.parametrize("backend", BACKENDS, ids=lambda b: b.name)
def test_a_file_under_a_refused_head_is_closed(backend: Backend) -> None:
    files: list[Any] = []
    out = written(backend, [GET], file_app(files, [("x-bad", "a\r\nb")]))
    assert out.startswith(b"HTTP/1.1 500 ")
    assert [file.closed for file in files] == [True]


@pytest.mark.parametrize("backend", BACKENDS, ids=lambda b: b.name)
def test_a_file_is_sent_no_further_than_its_content_length(backend: Backend) -> None:
    # The whole file went out after a head saying 3 bytes, then a 500 after that:
    # a keep-alive client read the rest as its next response.
    files: list[Any] = []
    out = written(backend, [GET, GET], file_app(files, [("Content-Length", "3")]))
    responses = out.split(b"HTTP/1.1 ")[1:]
    assert len(responses) == 2
    assert all(r.startswith(b"200 OK\r\n") and r.endswith(b"\r\n\r\nfil") for r in responses)
    assert [file.closed for file in files] == [True, True]


@pytest.mark.parametrize("backend", BACKENDS, ids=lambda b: b.name)
def test_an_error_head_after_write_never_carries_the_written_body(backend: Backend) -> None:
    # start_response(exc_info) after write() replaced the head but kept the bytes
    # written under the first one: a 500 whose body began with the page's.
    def app(environ: dict[str, Any], start_response: Any) -> Any:
        write = start_response("200 OK", [])
        write(b"partial")
        try:
            raise ValueError("boom")
        except ValueError:
            start_response("500 Oops", [], sys.exc_info())
        return [b"error page"]

    out = written(backend, [GET], app)
    assert b"partialerror page" not in out
    # Either the head went out with "partial" and the connection closed, or a plain 500.
    assert out.startswith(b"HTTP/1.1 200 OK\r\n") or b"500 Internal Server Error\n" in out


@pytest.mark.parametrize("backend", BACKENDS, ids=lambda b: b.name)
def test_a_client_stalled_mid_body_does_not_hold_the_apps_thread(backend: Backend) -> None:
    # Past BUFFERED_BODY, wsgi.input reads on the loop outside the connection's cancel
    # scope: --header-timeout never reached it and the thread waited for the client
    # forever (with --threads 1, so did every other request of the worker).
    seen: list[str] = []

    def app(environ: dict[str, Any], start_response: Any) -> Any:
        try:
            environ["wsgi.input"].read()
        except BaseException as exc:
            seen.append(type(exc).__name__)
            raise
        start_response("200 OK", [])
        return [b"read it all"]

    head = b"POST / HTTP/1.1\r\nHost: x\r\nContent-Length: %d\r\n\r\n" % (2 * BUFFERED_BODY)
    request = head + b"x" * (BUFFERED_BODY + BUFFERED_BODY // 2)  # then silence
    adapter = WSGIAdapter(app, backend, 1)
    started = time.monotonic()
    server = threading.Thread(
        target=serve,
        args=(backend, [request], app, True, adapter),
        kwargs={"max_body_size": 4 * BUFFERED_BODY},
        daemon=True,  # (stuck forever before the fix)
    )
    server.start()
    server.join(8)
    assert not server.is_alive()
    assert seen == ["ClientDisconnected"]
    assert time.monotonic() - started < 3  # --header-timeout is 0.3 s in serve()


@pytest.mark.parametrize("backend", BACKENDS, ids=lambda b: b.name)
def test_a_response_cut_short_is_still_counted(backend: Backend) -> None:
    def app(environ: dict[str, Any], start_response: Any) -> Any:
        start_response("200 OK", [])
        yield b"part"
        time.sleep(0.05)  # (the head goes out first)
        raise RuntimeError("mid-body")

    transport = MemoryTransport(backend, [GET])
    adapter = WSGIAdapter(app, backend, 1)
    server, _ = run_connection(
        backend, transport, app, adapter, 3, keep_alive=0.3, header_timeout=0.3
    )
    assert server.statuses == {200: 1}


@pytest.mark.parametrize("backend", BACKENDS, ids=lambda b: b.name)
def test_requests_waiting_for_a_thread_do_not_hide_a_stuck_pool(backend: Backend) -> None:
    # A request counted as running from its arrival, while it waited for a thread: with
    # every thread stuck, each new request looked like fresh work and the worker never
    # fell silent for the front to replace it, as long as clients kept coming.
    release = threading.Event()

    class Blocked:
        def run_app(self, app: Any, environ: Any) -> None:
            release.wait(5)

    adapter = WSGIAdapter(lambda environ, start_response: [], backend, 1)

    async def main() -> tuple[bool, bool]:
        async with backend.task_group() as tasks:
            tasks.start_soon(adapter._run, 1, Blocked(), {})
            await backend.sleep(0.4)
            alone = adapter.stuck(0.3)
            tasks.start_soon(adapter._run, 2, Blocked(), {})  # waits for the one thread
            await backend.sleep(0.05)
            with_newcomer = adapter.stuck(0.3)
            release.set()
        return alone, with_newcomer

    assert backend.run(main) == (True, True)


@pytest.mark.parametrize("backend", BACKENDS, ids=lambda b: b.name)
def test_a_pipe_in_the_file_wrapper_is_read_not_sendfiled(backend: Backend) -> None:
    # A pipe has a fileno, but tell() raises on it: a subprocess's stdout in
    # wsgi.file_wrapper was a 500 (gunicorn reads it block by block).
    def app(environ: dict[str, Any], start_response: Any) -> Any:
        read, write = os.pipe()
        os.write(write, b"from a pipe")
        os.close(write)
        start_response("200 OK", [])
        return environ["wsgi.file_wrapper"](os.fdopen(read, "rb"))

    out = written(backend, [GET], app)
    assert out.startswith(b"HTTP/1.1 200 OK\r\n")
    assert b"from a pipe" in out  # (whole, or chunked: as the thread and the loop meet)
