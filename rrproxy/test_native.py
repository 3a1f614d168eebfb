"""The native handler API (README's "Handler API"): Headers, Request and Response as
a handler sees them, built without sockets (a Request reads its body through a
callable, fed here from a list)."""

from __future__ import annotations

import json
from collections.abc import AsyncIterator, Iterator, Mapping
from typing import Any

import pytest

from .errors import BodyTooLarge
from .native import Headers, InvalidResponse, Request, Response, coerce_response

RAW = [
    (b"host", b"example.com"),
    (b"accept", b"text/html"),
    (b"set-cookie", b"a=1"),
    (b"x-name", b"caf\xe9"),
    (b"set-cookie", b"b=2"),
]


# --- Headers ---------------------------------------------------------------------------


def test_lookup_is_case_insensitive_and_gives_the_first_value() -> None:
    headers = Headers(list(RAW))
    assert headers["Host"] == headers["HOST"] == headers["host"] == "example.com"
    assert headers.get("Set-Cookie") == "a=1"
    assert headers.getall("SET-COOKIE") == ["a=1", "b=2"]
    assert "Accept" in headers and "ACCEPT" in headers
    assert "x-missing" not in headers
    assert not headers.__contains__(42)


def test_missing_names() -> None:
    headers = Headers(list(RAW))
    assert headers.get("x-missing") is None
    assert headers.get("x-missing", "fallback") == "fallback"
    assert headers.getall("x-missing") == []
    with pytest.raises(KeyError):
        headers["x-missing"]


def test_values_are_latin_1() -> None:
    headers = Headers(list(RAW))
    assert headers["x-name"] == "caf\u00e9"
    assert headers.get("X-Name") == "caf\u00e9"


def test_mapping_view_has_distinct_names_items_keep_repeats() -> None:
    headers = Headers(list(RAW))
    assert list(headers) == ["host", "accept", "set-cookie", "x-name"]
    assert len(headers) == 4
    assert headers.items() == [
        ("host", "example.com"),
        ("accept", "text/html"),
        ("set-cookie", "a=1"),
        ("x-name", "caf\u00e9"),
        ("set-cookie", "b=2"),
    ]
    assert dict(headers)["set-cookie"] == "a=1"  # as a Mapping: first value
    assert isinstance(headers, Mapping)
    assert headers.raw == RAW
    assert "set-cookie" in repr(headers) and "b=2" in repr(headers)


def test_empty_headers() -> None:
    headers = Headers([])
    assert len(headers) == 0
    assert list(headers) == []
    assert headers.items() == []
    assert headers.get("host") is None


# --- Request ---------------------------------------------------------------------------


class Reader:
    """A read_chunk callable over `chunks`: each call gives the next, then None (or
    raises `error` where the body would go on). Counts its calls."""

    def __init__(self, chunks: list[bytes], error: Exception | None = None) -> None:
        self.pending: Iterator[bytes] = iter(chunks)
        self.error = error
        self.calls = 0

    async def __call__(self) -> bytes | None:
        self.calls += 1
        for chunk in self.pending:
            return chunk
        if self.error is not None:
            raise self.error
        return None


def make_request(target: bytes = b"/", chunks: list[bytes] | None = None, **kwargs: Any) -> Request:
    options: dict[str, Any] = {
        "method": "POST",
        "headers": Headers(list(RAW)),
        "client": ("10.0.0.1", 5555),
        "http_version": "1.1",
        "worker_id": 2,
        "read_chunk": Reader(chunks or []),
    }
    options.update(kwargs)
    return Request(target=target, **options)


def test_request_attributes() -> None:
    request = make_request(b"/search/caf%C3%A9?q=a+b&x=%20&&flag")
    assert request.method == "POST"
    assert request.target == b"/search/caf%C3%A9?q=a+b&x=%20&&flag"
    assert request.path == "/search/caf%C3%A9"  # raw, not percent-decoded
    assert request.query == "q=a+b&x=%20&&flag"  # the raw query string
    assert request.client == ("10.0.0.1", 5555)
    assert request.http_version == "1.1"
    assert request.worker_id == 2
    assert request.headers.get("host") == "example.com"
    assert repr(request) == "<Request POST /search/caf%C3%A9?q=a+b&x=%20&&flag>"


@pytest.mark.parametrize(
    ("target", "path", "query"),
    [
        (b"/", "/", ""),
        (b"/a?", "/a", ""),
        (b"/a?b?c", "/a", "b?c"),
        (b"*", "*", ""),
        (b"http://h/p?x=1", "http://h/p", "x=1"),
        (b"/\xe9", "/\u00e9", ""),
    ],
)
def test_path_and_query(target: bytes, path: str, query: str) -> None:
    request = make_request(target)
    assert (request.path, request.query) == (path, query)


async def test_body_reads_every_chunk_once() -> None:
    read_chunk = Reader([b"hello ", b"", b"world"])
    request = make_request(read_chunk=read_chunk)
    assert await request.body() == b"hello world"
    calls = read_chunk.calls
    assert await request.body() == b"hello world"  # kept: not read again
    assert read_chunk.calls == calls


async def test_stream_yields_chunks_as_they_come_and_then_nothing() -> None:
    request = make_request(chunks=[b"a", b"bc", b"def"])
    assert [chunk async for chunk in request.stream()] == [b"a", b"bc", b"def"]
    assert [chunk async for chunk in request.stream()] == []


async def test_no_body() -> None:
    request = make_request()
    assert await request.body() == b""
    assert await request.text() == ""


async def test_text_and_json() -> None:
    data = {"name": "caf\u00e9", "n": [1, 2]}
    encoded = json.dumps(data).encode()
    assert await make_request(chunks=[encoded[:5], encoded[5:]]).json() == data
    assert await make_request(chunks=["caf\u00e9".encode()]).text() == "caf\u00e9"
    assert await make_request(chunks=[b"caf\xe9"]).text("latin-1") == "caf\u00e9"
    with pytest.raises(UnicodeDecodeError):
        await make_request(chunks=[b"caf\xe9"]).text()
    with pytest.raises(ValueError):
        await make_request(chunks=[b"{not json"]).json()


async def test_a_body_over_the_limit_raises_body_too_large() -> None:
    request = make_request(read_chunk=Reader([b"x" * 10], BodyTooLarge(10)))
    with pytest.raises(BodyTooLarge, match="exceeds the limit of 10 bytes"):
        await request.body()


# --- Response --------------------------------------------------------------------------


def test_response_defaults() -> None:
    response = Response()
    assert (response.status, response.body, response.headers) == (200, b"", [])
    assert repr(Response(404)) == "<Response 404>"


def test_response_headers_from_a_dict_a_list_a_tuple_or_any_mapping() -> None:
    pairs = [("content-type", "text/plain"), ("x-a", "1")]
    assert Response(200, b"", dict(pairs)).headers == pairs
    assert Response(200, b"", list(pairs)).headers == pairs
    assert Response(200, b"", tuple(pairs)).headers == pairs
    assert Response(200, b"", (pair for pair in pairs)).headers == pairs
    assert Response(200, b"", Headers([(b"x-a", b"1")])).headers == [("x-a", "1")]


def test_response_headers_are_a_copy() -> None:
    pairs = [("x-a", "1")]
    response = Response(200, b"", pairs)
    pairs.append(("x-b", "2"))
    assert response.headers == [("x-a", "1")]
    # Repeated names from a list stay (Set-Cookie).
    cookies = [("set-cookie", "a=1"), ("set-cookie", "b=2")]
    assert Response(200, b"", cookies).headers == cookies


def test_response_bodies() -> None:
    assert Response(201, "caf\u00e9").body == "caf\u00e9"

    async def chunks() -> AsyncIterator[bytes]:
        yield b"x"

    stream = chunks()
    assert Response(200, stream).body is stream


def test_response_json() -> None:
    response = Response.json({"a": [1, 2], "b": "caf\u00e9"})
    assert response.status == 200
    assert response.body == b'{"a":[1,2],"b":"caf\\u00e9"}'
    assert response.headers == [("content-type", "application/json")]
    assert Response.json([], status=404).status == 404
    with pytest.raises(TypeError):
        Response.json({"a": object()})


# --- what a handler may return -----------------------------------------------------------


def test_a_response_is_returned_as_is() -> None:
    response = Response(204)
    assert coerce_response(response) is response


@pytest.mark.parametrize(
    ("result", "body"),
    [
        (b"raw", b"raw"),
        (bytearray(b"raw"), b"raw"),
        (memoryview(b"raw"), b"raw"),
        ("caf\u00e9", "caf\u00e9".encode()),
        ("", b""),
    ],
)
def test_text_and_bytes_become_200_text_plain(result: Any, body: bytes) -> None:
    response = coerce_response(result)
    assert response.status == 200
    assert response.body == body and isinstance(response.body, bytes)
    assert response.headers == [("content-type", "text/plain; charset=utf-8")]


@pytest.mark.parametrize("result", [{"ok": True}, [1, "two"], {}])
def test_dicts_and_lists_become_200_json(result: Any) -> None:
    response = coerce_response(result)
    assert response.status == 200
    assert isinstance(response.body, bytes)
    assert json.loads(response.body) == result
    assert response.headers == [("content-type", "application/json")]


class Custom:
    pass


@pytest.mark.parametrize(
    ("result", "named"),
    [
        (None, "builtins.NoneType"),
        (42, "builtins.int"),
        ((b"a", b"b"), "builtins.tuple"),
        (Custom(), f"{__name__}.Custom"),
    ],
)
def test_anything_else_is_an_invalid_response(result: Any, named: str) -> None:
    with pytest.raises(InvalidResponse) as caught:
        coerce_response(result)
    assert str(caught.value) == (
        f"handler returned {named}, expected Response, str, bytes, dict or list"
    )
    assert isinstance(caught.value, TypeError)
