"""WSGI apps for the tests: one checked by wsgiref's validator on every request, and
one broken in each way PEP 3333 allows an app to be broken."""

from __future__ import annotations

import json
import os
import sys
import time
from wsgiref.validate import validator


def _raw(environ, start_response):
    path = environ["PATH_INFO"]
    if path == "/environ":
        shown = {k: v for k, v in environ.items() if isinstance(v, str | bool | int | tuple)}
        body = json.dumps(shown).encode()
        start_response("200 OK", [("Content-Type", "application/json")])
        return [body]
    if path == "/echo":
        stream = environ["wsgi.input"]
        how = environ.get("QUERY_STRING", "")
        if how == "lines":
            data = b"".join(stream.readlines())
        elif how == "iter":
            data = b"".join(line for line in stream)
        elif how == "small":
            data = b""
            while True:
                part = stream.read(1000)
                if not part:
                    break
                data += part
        else:
            length = int(environ.get("CONTENT_LENGTH") or 0)
            data = stream.read(length)
        start_response("200 OK", [("Content-Type", "application/octet-stream")])
        return [data]
    if path == "/write":
        write = start_response("200 OK", [("Content-Type", "text/plain")])
        write(b"written, ")
        return [b"then returned"]
    if path == "/stream":
        start_response("200 OK", [("Content-Type", "text/plain")])
        return (f"part {i}\n".encode() for i in range(5))
    if path == "/sleep":
        time.sleep(float(environ.get("QUERY_STRING") or "1"))
        start_response("200 OK", [("Content-Type", "text/plain")])
        return [b"slept"]
    if path == "/errors":
        environ["wsgi.errors"].write("a line for the log\n")
        start_response("200 OK", [("Content-Type", "text/plain")])
        return [b"logged"]
    if path == "/file":
        start_response("200 OK", [("Content-Type", "application/octet-stream")])
        return environ["wsgi.file_wrapper"](open(os.environ["WSGI_TEST_FILE"], "rb"))
    start_response("404 Not Found", [("Content-Type", "text/plain")])
    return [b"not found"]


validated = validator(_raw)

closed: list[str] = []


class _Closing:
    def __init__(self, chunks, name):
        self.chunks, self.name = chunks, name

    def __iter__(self):
        return iter(self.chunks)

    def close(self):
        print(f"closed {self.name}", file=sys.stderr, flush=True)


def broken(environ, start_response):
    path = environ["PATH_INFO"]
    if path == "/raise":
        raise RuntimeError("the app raised on purpose")
    if path == "/bad-status":
        start_response("OK", [])
        return [b"x"]
    if path == "/bad-headers":
        start_response("200 OK", [("X-Bad", "line\r\nbreak")])
        return [b"x"]
    if path == "/bad-header-type":
        start_response("200 OK", [(b"x-bytes", b"not str")])
        return [b"x"]
    if path == "/no-start-response":
        return _Closing([b"body without a head"], "no-start")
    if path == "/str-chunk":
        start_response("200 OK", [("Content-Type", "text/plain")])
        return _Closing(["a str, not bytes"], "str")
    if path == "/raise-after-head":

        def body():
            yield b"first part\n"
            time.sleep(0.3)  # the loop has sent the head and this part by now
            raise RuntimeError("broke after the head")

        start_response("200 OK", [("Content-Type", "text/plain")])
        return body()
    if path == "/exc-info":
        try:
            raise ValueError("recovering")
        except ValueError:
            start_response("200 OK", [("Content-Type", "text/plain")])
            start_response(
                "500 Internal Server Error", [("Content-Type", "text/plain")], sys.exc_info()
            )
        return [b"recovered with exc_info"]
    start_response("200 OK", [("Content-Type", "text/plain")])
    return _Closing([b"fine"], "fine")
