"""HTTP/1.1 pieces that need no I/O: header encoding, the Date header cache, error
responses, and the limits check on a request's declared body size."""

from __future__ import annotations

import time
from email.utils import formatdate
from http import HTTPStatus
from typing import TYPE_CHECKING

if TYPE_CHECKING:
    import h11

_date_second = -1
_date_value = b""


def http_date() -> bytes:
    """The Date header value, formatted once per second."""
    global _date_second, _date_value
    now = int(time.time())
    if now != _date_second:
        _date_second = now
        _date_value = formatdate(now, usegmt=True).encode("ascii")
    return _date_value


def encode_header_pairs(
    headers: list[tuple[str, str]] | list[tuple[bytes, bytes]],
) -> list[tuple[bytes, bytes]]:
    """Handler headers (str or bytes) to the bytes pairs h11 takes, names lowercased."""
    out: list[tuple[bytes, bytes]] = []
    for name, value in headers:
        if isinstance(name, str):
            name = name.encode("latin-1")
        if isinstance(value, str):
            value = value.encode("latin-1")
        elif not isinstance(value, bytes):
            value = str(value).encode("latin-1")
        out.append((name.lower(), value))
    return out


def has_header(pairs: list[tuple[bytes, bytes]], name: bytes) -> bool:
    """Whether `pairs` (lowercased names) has a header called `name`."""
    return any(k == name for k, _ in pairs)


def declared_length(pairs: list[tuple[bytes, bytes]]) -> int | None:
    """The request's Content-Length (h11 has validated it), or None if absent."""
    for name, value in pairs:
        if name == b"content-length":
            return int(value)
    return None


_REASONS: dict[int, bytes] = {s.value: s.phrase.encode("ascii") for s in HTTPStatus}


def head_size(request: h11.Request) -> int:
    """Bytes of the request line and headers as received (to within the spaces)."""
    size = len(request.method) + len(request.target) + 12
    for name, value in request.headers:
        size += len(name) + len(value) + 4
    return size


def reason(status: int) -> bytes:
    """The standard reason phrase (empty for a code HTTP does not name)."""
    return _REASONS.get(status, b"")


def error_body(status: int) -> bytes:
    """The plain-text body of an error response rrproxy writes itself: the status and its reason."""
    return b"%d %s\n" % (status, reason(status))
