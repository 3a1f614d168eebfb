"""Exceptions a handler may see while reading a request, shared by the I/O-free
protocol core and the handler APIs (`rrproxy.BodyTooLarge` and friends)."""

from __future__ import annotations


class BodyTooLarge(Exception):
    """The request body exceeds --max-body-size; the client is answered 413."""

    def __init__(self, limit: int) -> None:
        super().__init__(f"request body exceeds the limit of {limit} bytes (--max-body-size)")
        self.limit = limit


class MalformedBody(Exception):
    """The request body broke HTTP framing (a bad chunk...); the client is answered
    `status` (400, or 413 for a chunk larger than the limit) and the connection
    closes."""

    def __init__(self, reason: str = "malformed request body", status: int = 400) -> None:
        super().__init__(reason)
        self.status = status


class ClientDisconnected(Exception):
    """The client went away (or stalled past --header-timeout) while the handler was
    reading the request body."""
