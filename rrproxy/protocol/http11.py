"""One HTTP/1.1 server connection without I/O: bytes in, events and bytes out.

h11 parses and writes, behind the strict framing checks (framing.py); this class adds
what a server decides on top of them: the limits (head, header count, body),
keep-alive, Expect: 100-continue, bodiless responses, error answers h11 will not
write any more. The worker's connection logic (worker/connection.py) pulls events
and pushes the bytes it gets to the client, on whichever event loop it runs.
Unit-tested with plain bytes (test_http11.py).
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import cast

import h11

from ..errors import BodyTooLarge, MalformedBody
from .framing import FramingError, RequestFraming
from .http import declared_length, error_body, has_header, http_date, reason

#: The request has been read whole (after an Upgrade request, h11 waits in
#: MIGHT_SWITCH_PROTOCOL until our response says whether it switches).
# MIGHT_SWITCH_PROTOCOL is public in h11's docs but missing from its __all__.
_REQUEST_READ = (h11.DONE, h11.MIGHT_SWITCH_PROTOCOL)  # type: ignore[attr-defined]
_VERSIONS = (b"1.1", b"1.0")
NEED_DATA = h11.NEED_DATA


class BodyCut(Exception):
    """The client closed the connection in the middle of the body."""


@dataclass(frozen=True, slots=True)
class Reject:
    """The client's bytes break the rules: answer `status` and close."""

    status: int


@dataclass(frozen=True, slots=True)
class Limits:
    """What one request may take: head bytes (request line and headers), header
    lines, and body bytes (--max-header-size, --max-headers, --max-body-size)."""

    max_head: int = 16 * 1024
    max_headers: int = 100
    max_body: int = 1024 * 1024


class InvalidResponse(Exception):
    """What the app asked us to send is not valid HTTP (h11 refused it)."""


class _Length:
    """Stands for `count` bytes sent by sendfile, so h11 counts them (h11's
    Content-Length writer only takes len() of what it passes through)."""

    __slots__ = ("count",)

    def __init__(self, count: int) -> None:
        self.count = count

    def __len__(self) -> int:
        return self.count


def header_pairs(request: h11.Request) -> list[tuple[bytes, bytes]]:
    """The request's headers as a list: h11's Headers is a Sequence whose iteration
    goes through the ABC one __getitem__ at a time (24 calls a request showed in the
    profile), so it is read once, from its item list when it has one."""
    items = getattr(request.headers, "_full_items", None)
    if items is not None:
        return [(name, value) for _, name, value in items]
    return list(request.headers)


class ServerConnection:
    """One client connection's HTTP/1.1 state, request after request: feed it the
    client's bytes, pull requests and body chunks, and send what it returns."""

    __slots__ = ("_body_received", "body_done", "conn", "framing", "headers", "limits")

    def __init__(self, limits: Limits) -> None:
        self.limits = limits
        self.conn = h11.Connection(h11.SERVER, max_incomplete_event_size=limits.max_head)
        #: Every byte from the client passes the strict framing rules before h11.
        self.framing = RequestFraming(limits.max_head, limits.max_headers, limits.max_body)
        self._body_received = 0
        #: The current request's body has been read to its end.
        self.body_done = False
        #: The current request's headers as a plain list of (lowercased name, value).
        self.headers: list[tuple[bytes, bytes]] = []

    # --- bytes in ----------------------------------------------------------------

    def receive_data(self, data: bytes) -> None:
        """Bytes from the client; b"" at EOF."""
        if not data:
            self.framing.feed(b"")
            self.conn.receive_data(b"")
            return
        validated = self.framing.feed(data)
        if validated:
            self.conn.receive_data(validated)

    @property
    def head_started(self) -> bool:
        """Bytes have arrived since the last request (the client is not idle; empty
        lines before a request line count, or CRLFs could hold a connection open)."""
        return self.framing.started or bool(self.conn.trailing_data[0])

    def next_request(self) -> h11.Request | Reject | object | None:
        """The next request's head; NEED_DATA; a Reject; or None (the client closed,
        or something other than a request came: close quietly)."""
        try:
            event = self.conn.next_event()
        except h11.RemoteProtocolError as exc:
            return Reject(exc.error_status_hint)
        if event is NEED_DATA:
            error = self.framing.error
            return Reject(error.status) if error is not None else NEED_DATA
        if type(event) is h11.Request:
            if event.http_version not in _VERSIONS:
                return Reject(505)
            self._body_received = 0
            self.body_done = False
            self.headers = header_pairs(event)
            return event
        return None

    def declared_length(self) -> int | None:
        """The current request's Content-Length (already validated by the framing),
        or None when it has none (chunked, or no body)."""
        return declared_length(self.headers)

    def next_body_chunk(self) -> bytes | object | None:
        """The next piece of the body; None at its end; NEED_DATA. Raises
        BodyTooLarge, MalformedBody or BodyCut."""
        if self.body_done:
            return None
        conn = self.conn
        try:
            event = conn.next_event()
        except h11.RemoteProtocolError as exc:
            if conn.trailing_data[1]:  # the client closed mid-body
                raise BodyCut(str(exc)) from None
            raise MalformedBody(str(exc)) from None
        if event is NEED_DATA:
            error = self.framing.error
            if error is not None:
                raise MalformedBody(str(error), error.status)
            return NEED_DATA
        kind = type(event)
        if kind is h11.Data:
            data = cast(h11.Data, event).data  # mypy does not narrow on `kind is`
            self._body_received += len(data)
            if self._body_received > self.limits.max_body:
                raise BodyTooLarge(self.limits.max_body)
            return bytes(data)
        if kind is h11.EndOfMessage:
            self.body_done = True
            return None
        raise BodyCut("connection closed before the body ended")

    def continue_100(self) -> bytes:
        """The `100 Continue` to send before reading a body the client waits to send."""
        if self.conn.they_are_waiting_for_100_continue:
            return self.conn.send(h11.InformationalResponse(status_code=100, headers=[]))
        return b""

    def discard_buffered_body(self) -> None:
        """The app answered without reading the whole body: consume what is already
        buffered (no I/O), so a small ignored body does not cost keep-alive."""
        conn = self.conn
        try:
            while conn.their_state is h11.SEND_BODY:
                if conn.next_event() is NEED_DATA:
                    return
        except h11.RemoteProtocolError:
            return

    @property
    def body_unread(self) -> bool:
        """The request's body is neither read whole nor known to be malformed: the
        connection cannot carry another request after the response."""
        return self.conn.their_state not in _REQUEST_READ

    @property
    def body_broken(self) -> bool:
        """The request's body broke the framing rules (the app may have swallowed
        the error). Events already buffered are pulled first: a bodiless request
        ahead of a bad pipelined one is complete, not broken."""
        self.discard_buffered_body()
        conn = self.conn
        return conn.their_state is h11.ERROR or (
            self.framing.error is not None and conn.their_state is h11.SEND_BODY
        )

    # --- bytes out ----------------------------------------------------------------

    def response(
        self,
        status: int,
        headers: list[tuple[bytes, bytes]],
        body: bytes | None,
        *,
        head: bool = False,
        close: bool = False,
    ) -> bytes:
        """A response's bytes: the head, and the whole body when `body` is given
        (None: the body follows as chunks, then `end()`). Adds Content-Length (for a
        whole body), Connection: close (when asked, or when the request's body was
        not read) and Date. 1xx, 204 and 304 carry no body whatever `body` holds
        (RFC 9110 §6.4.1), nor does a response to HEAD. InvalidResponse if h11
        refuses it; nothing has been written then, so a 500 can still go out."""
        bodiless = head or status in (204, 304) or 100 <= status < 200
        if body is not None:
            if self.conn.their_state is h11.SEND_BODY:
                self.discard_buffered_body()
            if status not in (204, 304) and not has_header(headers, b"content-length"):
                headers.append((b"content-length", b"%d" % len(body)))
        if close or self.framing.holding or (body is not None and self.body_unread):
            # framing.holding: an Upgrade request answered normally. The connection
            # closes rather than read on as HTTP what the client meant for the new
            # protocol (a proxy that did not check for a 101 would pass requests
            # hidden in it: "WebSocket smuggling").
            headers.append((b"connection", b"close"))
        headers.append((b"date", http_date()))
        conn = self.conn
        try:
            data = conn.send(
                h11.Response(status_code=status, headers=headers, reason=reason(status))
            )
            if body is not None:
                if body and not bodiless:
                    data += conn.send(h11.Data(data=body))
                data += conn.send(h11.EndOfMessage())
        except h11.LocalProtocolError as exc:
            raise InvalidResponse(str(exc)) from None
        return data

    def chunk(self, data: bytes) -> bytes:
        """A piece of a streamed body (h11 frames it). InvalidResponse if it breaks
        the response's own Content-Length."""
        try:
            return self.conn.send(h11.Data(data=data))
        except h11.LocalProtocolError as exc:
            raise InvalidResponse(str(exc)) from None

    def sent_elsewhere(self, count: int) -> None:
        """`count` body bytes went out without passing through here (os.sendfile of a
        file, under Content-Length framing): account for them in h11's state."""
        # _Length is no bytes, on purpose: h11 only takes its len() (see _Length).
        pieces = self.conn.send_with_data_passthrough(
            h11.Data(data=_Length(count))  # type: ignore[arg-type]
        )
        if pieces is None or len(pieces) != 1 or not isinstance(pieces[0], _Length):
            # Only Content-Length framing passes the data on untouched.
            raise InvalidResponse("a file can only be sent with a Content-Length")

    def end(self) -> bytes:
        """The end of a streamed body (the last chunk, under chunked framing).
        InvalidResponse if fewer bytes went out than its Content-Length said."""
        try:
            return self.conn.send(h11.EndOfMessage())
        except h11.LocalProtocolError as exc:
            raise InvalidResponse(str(exc)) from None

    def error(self, status: int, *, written: bool | None = None) -> bytes:
        """An error response that closes the connection; b"" if a response has
        already begun (then only closing says something went wrong). `written=False`:
        nothing has gone out yet whatever h11's state says (it refused the app's
        response before a byte was written)."""
        conn = self.conn
        if written is not False and conn.our_state not in (h11.IDLE, h11.SEND_RESPONSE):
            return b""
        body = error_body(status)
        headers = [
            (b"content-type", b"text/plain; charset=utf-8"),
            (b"content-length", b"%d" % len(body)),
            (b"connection", b"close"),
            (b"date", http_date()),
        ]
        try:
            data = conn.send(
                h11.Response(status_code=status, headers=headers, reason=reason(status))
            )
            return data + conn.send(h11.Data(data=body)) + conn.send(h11.EndOfMessage())
        except h11.LocalProtocolError:
            # h11 will not (no request parsed, or its state is ERROR): write it raw.
            return (
                b"HTTP/1.1 %d %s\r\n" % (status, reason(status))
                + b"".join(k + b": " + v + b"\r\n" for k, v in headers)
                + b"\r\n"
                + body
            )

    def informational(self, status: int, headers: list[tuple[bytes, bytes]]) -> bytes:
        """A 1xx (101 Switching Protocols for a WebSocket)."""
        reason_phrase = b"Switching Protocols" if status == 101 else reason(status)
        return self.conn.send(
            h11.InformationalResponse(status_code=status, headers=headers, reason=reason_phrase)
        )

    # --- between requests ---------------------------------------------------------

    @property
    def response_complete(self) -> bool:
        """The current response has been written to its end."""
        return self.conn.our_state is h11.DONE

    def start_next_request(self) -> bool:
        """After a complete response: whether the connection may carry another
        request (then it is ready for it)."""
        conn = self.conn
        if conn.their_state is h11.SEND_BODY:
            self.discard_buffered_body()
        if conn.our_state is not h11.DONE or conn.their_state is not h11.DONE:
            return False
        conn.start_next_cycle()
        return True

    def upgraded_data(self) -> bytes:
        """After an accepted WebSocket upgrade: what the client sent after its request
        (frames of the new protocol, held back from h11)."""
        trailing, _ = self.conn.trailing_data
        return trailing + self.framing.held()


__all__ = [
    "NEED_DATA",
    "BodyCut",
    "BodyTooLarge",
    "FramingError",
    "InvalidResponse",
    "Limits",
    "MalformedBody",
    "Reject",
    "ServerConnection",
]
