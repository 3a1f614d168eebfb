"""Strict HTTP/1.1 request framing, checked before h11 sees a byte.

h11 is lenient where leniency lets requests be smuggled past a proxy: it takes a bare
LF as a line end, merges obs-fold lines into the header before them, accepts
Content-Length and Transfer-Encoding together, and `5, 5` as a length. A server
behind a proxy that frames the other way serves a request the proxy never saw. So
the bytes from the socket go through `RequestFraming` first, the way llhttp and
gunicorn judge them (RFC 9112): it finds where each request ends by the strict rules,
rejects anything the rules do not allow, and hands h11 only bytes it has validated
(chunk headers rewritten canonically, so h11 can only agree). h11 still parses them
into events; nothing here builds requests.

I/O-free: bytes in, validated bytes out; a violation becomes `error` (a
`FramingError` with the status to answer), raised by the connection only once h11
has consumed the valid bytes before it, so pipelined requests ahead of a bad one are
still answered.
"""

from __future__ import annotations

import re

from .head import CHUNKED, TOKEN, FramingError, judge_head, judge_trailers

#: RFC 9112 §7.1.1: chunk-size [ chunk-ext ] CRLF; chunk-ext is
#: *( BWS ";" BWS ext-name [ BWS "=" BWS ext-value ] ), ext-value a token or a
#: quoted-string. The BWS is not allowed here: llhttp rejects it, and wherever two
#: parsers frame a request differently, one of them can be smuggled past (the
#: differential test in test_framing.py holds rrproxy to that). More than 16 hex
#: digits would overflow 64 bits.
_QUOTED = rb'"(?:[\t\x20\x21\x23-\x5b\x5d-\x7e\x80-\xff]|\\[\t\x20-\x7e\x80-\xff])*"'
_CHUNK_EXT = rb"(?:;" + TOKEN + rb"(?:=(?:" + TOKEN + rb"|" + _QUOTED + rb"))?)*"
_CHUNK_HEADER = re.compile(rb"([0-9A-Fa-f]{1,16})" + _CHUNK_EXT + rb"\r\n")
_MAX_CHUNK_LINE = 4096
#: Chunk-extension bytes one message may carry in all (Node's limit since
#: CVE-2024-22019, and its 413). Extensions are parsed and dropped, and a chunk may
#: hold one byte: without a total, ~4 KiB of chunk line per body byte is parsed.
MAX_CHUNK_EXTENSIONS = 16 * 1024
_EMPTY_LINES = re.compile(rb"(?:\r\n)*")
#: Verdicts of recently seen valid heads (cleared when full), and the largest head
#: that is cached.
_VERDICTS: dict[tuple[bytes, int], tuple[int, bool]] = {}
_CACHED_VERDICTS = 256
_CACHED_HEAD_MAX = 2048


# Parser states.
_HEAD, _BODY, _CHUNK_SIZE, _CHUNK_DATA, _CHUNK_END, _TRAILERS, _HOLD, _FAILED = range(8)


class RequestFraming:
    """Validates a connection's request stream; see the module docstring."""

    __slots__ = (
        "_buffer",
        "_extensions",
        "_remaining",
        "_state",
        "_upgrade",
        "error",
        "max_body",
        "max_head",
        "max_headers",
        "messages",
        "started",
    )

    def __init__(self, max_head: int, max_headers: int, max_body: int) -> None:
        self.max_head = max_head
        self.max_headers = max_headers
        self.max_body = max_body
        #: Bytes not yet passed on. A bytearray: each step consumes its front with
        #: `del`, which CPython does in place (re-slicing bytes copied the rest of
        #: the buffer for every chunk line or pipelined head: quadratic per read).
        self._buffer = bytearray()
        self._state = _HEAD
        self._remaining = 0
        #: Chunk-extension bytes of the current message so far.
        self._extensions = 0
        self._upgrade = False
        #: Set once the stream breaks the rules: everything before it was returned.
        self.error: FramingError | None = None
        #: Requests whose end has been found (and whose bytes were returned).
        self.messages = 0
        #: Bytes of the next request (empty lines included) have arrived.
        self.started = False

    @property
    def holding(self) -> bool:
        """An Upgrade request has been read: what follows is held back from h11 (for
        `held()` if the upgrade is accepted; otherwise the connection must close)."""
        return self._state == _HOLD

    def feed(self, data: bytes) -> bytes:
        """Bytes from the socket (b"" at EOF) in; the validated bytes for h11 out."""
        if self._state == _FAILED:
            return b""
        if not data:
            if self._buffer.strip(b"\r\n") and self._state != _HOLD:
                self._fail(400, "the connection closed in the middle of a request")
            return b""
        if self._state == _BODY and not self._buffer and len(data) <= self._remaining:
            # A body read that ends at or before the body's end: passed on as it is,
            # without a copy into the buffer and out again.
            self._remaining -= len(data)
            if not self._remaining:
                self._message_done()
            return data
        self._buffer += data
        if self._state == _HOLD:
            return b""
        if self._state == _HEAD:
            self.started = True
        return self._advance()

    def held(self) -> bytes:
        """After an upgrade request: the raw bytes that followed it (the new
        protocol's), handed over once the upgrade is accepted."""
        return self._pop(len(self._buffer))

    # --- the state machine -------------------------------------------------------

    def _pop(self, size: int) -> bytes:
        """The first `size` bytes of the buffer (all of it if it holds fewer), taken
        out of it. The usual read ends where the step does (one whole head, the rest
        of a body): that is taken whole, without a slice, which would be a copy."""
        buffer = self._buffer
        if len(buffer) <= size:
            data = bytes(buffer)
            buffer.clear()
        else:
            data = bytes(buffer[:size])
            del buffer[:size]
        return data

    def _fail(self, status: int, reason: str) -> None:
        self.error = FramingError(status, reason)
        self._state = _FAILED
        self._buffer.clear()

    def _advance(self) -> bytes:
        out: list[bytes] = []
        try:
            while self._buffer:
                state = self._state
                if state == _HEAD:
                    if not self._head(out):
                        break
                elif state == _BODY:
                    self._body(out)
                elif state == _CHUNK_SIZE:
                    if not self._chunk_size(out):
                        break
                elif state == _CHUNK_DATA:
                    self._chunk_data(out)
                elif state == _CHUNK_END:
                    if not self._chunk_end(out):
                        break
                elif state == _TRAILERS:
                    if not self._trailers(out):
                        break
                else:  # _HOLD or _FAILED
                    break
        except FramingError as exc:
            self._fail(exc.status, str(exc))
        return b"".join(out)

    def _message_done(self) -> None:
        self.messages += 1
        self.started = bool(self._buffer)
        self._state = _HOLD if self._upgrade else _HEAD

    def _head(self, out: list[bytes]) -> bool:
        buffer = self._buffer
        if buffer.startswith((b"\r", b"\n")):
            # RFC 9112 §2.2: ignore empty lines (CRLF) before a request line.
            # match() is not None: the buffer starts with CR or LF.
            del buffer[: _EMPTY_LINES.match(buffer).end()]  # type: ignore[union-attr]
            if buffer[:1] == b"\n" or (buffer[:1] == b"\r" and len(buffer) > 1):
                raise FramingError(400, "a bare LF or CR before the request line")
            if len(buffer) < 2:
                return False
        end = buffer.find(b"\r\n\r\n")
        stop = len(buffer) if end < 0 else end + 4
        # A bare LF or CR anywhere in the head: reject now, not once the head "ends"
        # (a client using bare LF never sends CRLF CRLF). Counted in place: a slice
        # of the bytearray would be a copy per head.
        crlf = buffer.count(b"\r\n", 0, stop)
        bare_cr = buffer.count(b"\r", 0, stop) - buffer.endswith(b"\r", 0, stop) != crlf
        if buffer.count(b"\n", 0, stop) != crlf or bare_cr:
            raise FramingError(400, "a line in the request head does not end with CRLF")
        if end < 0 or stop > self.max_head:
            if stop > self.max_head:
                line_end = buffer.find(b"\r\n")
                if line_end < 0 or line_end > self.max_head:
                    raise FramingError(414, "the request line is longer than the limit")
                raise FramingError(431, "the request head is larger than the limit")
            return False
        head = self._pop(stop)
        self._validate_head(head)
        out.append(head)
        return True

    def _validate_head(self, head: bytes) -> None:
        key = (head, self.max_headers)
        verdict = _VERDICTS.get(key)
        if verdict is None:
            verdict = judge_head(head, self.max_headers)
            if len(head) <= _CACHED_HEAD_MAX:
                # Keep-alive clients send the same head again and again (a load
                # balancer's health check, a browser's polling): judged once.
                if len(_VERDICTS) >= _CACHED_VERDICTS:
                    _VERDICTS.clear()
                _VERDICTS[key] = verdict
        length, upgrade = verdict
        self._upgrade = upgrade
        if length == CHUNKED:
            self._state = _CHUNK_SIZE
            self._extensions = 0
        elif length:
            self._remaining = length
            self._state = _BODY
        else:
            self._message_done()

    def _body(self, out: list[bytes]) -> None:
        take = self._pop(self._remaining)
        self._remaining -= len(take)
        out.append(take)
        if not self._remaining:
            self._message_done()

    def _chunk_size(self, out: list[bytes]) -> bool:
        buffer = self._buffer
        end = buffer.find(b"\r\n")
        if end < 0:
            if b"\n" in buffer or len(buffer) > _MAX_CHUNK_LINE:
                raise FramingError(400, "malformed chunk header")
            return False
        match = _CHUNK_HEADER.fullmatch(buffer, 0, end + 2)
        if match is None:
            raise FramingError(400, "malformed chunk header")
        size = int(match.group(1), 16)
        if size > self.max_body:
            raise FramingError(413, "a chunk larger than the body limit")
        extensions = end - match.end(1)
        if extensions:
            self._extensions += extensions
            if self._extensions > MAX_CHUNK_EXTENSIONS:
                raise FramingError(413, "chunk extensions larger than the limit")
        del buffer[: end + 2]
        # Canonical for h11 (extensions dropped: nobody sees them anyway).
        out.append(b"%x\r\n" % size)
        if size:
            self._remaining = size
            self._state = _CHUNK_DATA
        else:
            self._state = _TRAILERS
        return True

    def _chunk_data(self, out: list[bytes]) -> None:
        take = self._pop(self._remaining)
        self._remaining -= len(take)
        out.append(take)
        if not self._remaining:
            self._state = _CHUNK_END

    def _chunk_end(self, out: list[bytes]) -> bool:
        buffer = self._buffer
        if len(buffer) < 2:
            if buffer != b"\r":
                raise FramingError(400, "chunk data not followed by CRLF")
            return False
        if buffer[:2] != b"\r\n":
            raise FramingError(400, "chunk data not followed by CRLF")
        del buffer[:2]
        out.append(b"\r\n")
        self._state = _CHUNK_SIZE
        return True

    def _trailers(self, out: list[bytes]) -> bool:
        buffer = self._buffer
        if buffer[:2] == b"\r\n":
            end = 0
        else:
            end = buffer.find(b"\r\n\r\n")
            scanned = buffer if end < 0 else buffer[: end + 4]
            crlf = scanned.count(b"\r\n")
            bare_cr = scanned.count(b"\r") - scanned.endswith(b"\r") != crlf
            if scanned.count(b"\n") != crlf or bare_cr:
                raise FramingError(400, "a trailer line does not end with CRLF")
            if end < 0:
                if len(buffer) > self.max_head:
                    raise FramingError(431, "trailers larger than the limit")
                return False
            judge_trailers(bytes(buffer[: end + 2]), self.max_head, self.max_headers)
            end += 2
        # Trailers are validated and dropped (no interface passes them on).
        del buffer[: end + 2]
        out.append(b"\r\n")
        self._message_done()
        return True


__all__ = ["MAX_CHUNK_EXTENSIONS", "FramingError", "RequestFraming"]
