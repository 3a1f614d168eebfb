"""The native handler API: `async def handler(request: Request) -> Response`.

These classes hold no I/O of their own: a Request reads its body through a callable
the worker's connection gives it, so they can be built and tested without sockets.
"""

from __future__ import annotations

import json
from collections.abc import (
    AsyncIterable,
    AsyncIterator,
    Awaitable,
    Callable,
    Iterable,
    Iterator,
    Mapping,
)
from typing import Any

from .errors import BodyTooLarge, ClientDisconnected, MalformedBody

HeaderPairs = list[tuple[bytes, bytes]]


class Headers(Mapping[str, str]):
    """Request headers: case-insensitive lookup, repeated names kept in order.

    `headers["accept"]` and `get()` give the first value; `getall()` gives every one.
    Names and values are decoded as latin-1 lazily, on access.
    """

    __slots__ = ("_raw",)

    def __init__(self, raw: HeaderPairs) -> None:
        # h11 hands us lowercased names; keep its list as is (no copy on the hot path).
        self._raw = raw

    @property
    def raw(self) -> HeaderPairs:
        """The (lowercased name, value) byte pairs as received, in order."""
        return self._raw

    def _find(self, name: str) -> bytes | None:
        key = name.lower().encode("latin-1")
        for k, v in self._raw:
            if k == key:
                return v
        return None

    def __getitem__(self, name: str) -> str:
        value = self._find(name)
        if value is None:
            raise KeyError(name)
        return value.decode("latin-1")

    def get(self, name: str, default: Any = None) -> Any:
        """The first value of `name` (in any case), or `default` if it is absent."""
        value = self._find(name)
        return default if value is None else value.decode("latin-1")

    def getall(self, name: str) -> list[str]:
        """Every value of `name` (in any case), in the order received; [] if absent."""
        key = name.lower().encode("latin-1")
        return [v.decode("latin-1") for k, v in self._raw if k == key]

    def __contains__(self, name: object) -> bool:
        return isinstance(name, str) and self._find(name) is not None

    def __iter__(self) -> Iterator[str]:
        """Distinct names, in first-seen order."""
        seen: dict[bytes, None] = dict.fromkeys(k for k, _ in self._raw)
        return (k.decode("latin-1") for k in seen)

    def __len__(self) -> int:
        return len({k for k, _ in self._raw})

    # A list with repeated names, not Mapping's ItemsView of distinct keys.
    def items(self) -> list[tuple[str, str]]:  # type: ignore[override]
        """Every (name, value) pair, repeated names included."""
        return [(k.decode("latin-1"), v.decode("latin-1")) for k, v in self._raw]

    def __repr__(self) -> str:
        return f"Headers({self.items()!r})"


class Request:
    """One HTTP request as the handler sees it."""

    __slots__ = (
        "_body",
        "_read_chunk",
        "client",
        "headers",
        "http_version",
        "method",
        "path",
        "query",
        "target",
        "worker_id",
    )

    def __init__(
        self,
        *,
        method: str,
        target: bytes,
        headers: Headers,
        client: tuple[str, int] | None,
        http_version: str,
        worker_id: int,
        read_chunk: Callable[[], Awaitable[bytes | None]],
    ) -> None:
        self.method = method
        self.target = target
        path, _, query = target.partition(b"?")
        self.path = path.decode("latin-1")
        self.query = query.decode("latin-1")
        self.headers = headers
        self.client = client
        self.http_version = http_version
        self.worker_id = worker_id
        self._read_chunk = read_chunk
        self._body: bytes | None = None

    async def stream(self) -> AsyncIterator[bytes]:
        """The body as it arrives, chunk by chunk (a second call yields nothing new)."""
        while True:
            chunk = await self._read_chunk()
            if chunk is None:
                return
            yield chunk

    async def body(self) -> bytes:
        """The whole body. Raises BodyTooLarge above --max-body-size."""
        if self._body is None:
            parts = [chunk async for chunk in self.stream()]
            self._body = b"".join(parts)
        return self._body

    async def text(self, encoding: str = "utf-8") -> str:
        """The whole body decoded (UnicodeDecodeError if it does not decode)."""
        return (await self.body()).decode(encoding)

    async def json(self) -> Any:
        """The whole body parsed as JSON (ValueError if it is not JSON)."""
        return json.loads(await self.body())

    def __repr__(self) -> str:
        return f"<Request {self.method} {self.target.decode('latin-1')}>"


Body = bytes | str | AsyncIterable[bytes] | AsyncIterable[str]


class Response:
    """What a handler returns. A `bytes`/`str` body is sent with Content-Length; an
    async iterable body is streamed (chunked on HTTP/1.1)."""

    __slots__ = ("body", "headers", "status")

    def __init__(
        self,
        status: int = 200,
        body: Body = b"",
        headers: Mapping[str, str] | Iterable[tuple[str, str]] | None = None,
    ) -> None:
        self.status = status
        self.body = body
        # Exact-type checks first: isinstance() against the Mapping ABC showed up in
        # the worker's profile at a few percent of a hello request.
        kind = type(headers)
        if headers is None:
            self.headers: list[tuple[str, str]] = []
        # (mypy does not narrow on `kind is`: the two ignores below.)
        elif kind is list or kind is tuple:
            self.headers = list(headers)  # type: ignore[arg-type]
        elif kind is dict or isinstance(headers, Mapping):
            self.headers = list(headers.items())  # type: ignore[union-attr]
        else:
            self.headers = list(headers)

    @classmethod
    def json(cls, data: Any, status: int = 200) -> Response:
        """A response whose body is `data` as compact JSON, typed application/json."""
        body = json.dumps(data, separators=(",", ":")).encode()
        return cls(status, body, [("content-type", "application/json")])

    def __repr__(self) -> str:
        return f"<Response {self.status}>"


class InvalidResponse(TypeError):
    """The handler returned something that is not a response."""


def coerce_response(result: Any) -> Response:
    """Turn what a handler returned into a Response, or raise InvalidResponse."""
    if isinstance(result, Response):
        return result
    if isinstance(result, bytes | bytearray | memoryview):
        return Response(200, bytes(result), [("content-type", "text/plain; charset=utf-8")])
    if isinstance(result, str):
        return Response(200, result.encode(), [("content-type", "text/plain; charset=utf-8")])
    if isinstance(result, dict | list):
        return Response.json(result)
    raise InvalidResponse(
        f"handler returned {type(result).__module__}.{type(result).__qualname__}, "
        "expected Response, str, bytes, dict or list"
    )


__all__ = [
    "BodyTooLarge",
    "ClientDisconnected",
    "Headers",
    "InvalidResponse",
    "MalformedBody",
    "Request",
    "Response",
    "coerce_response",
]
