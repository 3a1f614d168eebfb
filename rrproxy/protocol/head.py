"""The rules for one HTTP/1.1 request head, and for a chunked body's trailers (RFC 9112,
as llhttp and gunicorn apply them): whether it may be served, and how its body is
framed. Pure functions of the bytes, used by framing.RequestFraming (which caches
the verdicts on heads)."""

from __future__ import annotations

import re

#: RFC 9110 §5.6.2 token.
TOKEN = rb"[!#$%&'*+\-.^_`|~0-9A-Za-z]+"
_REQUEST_LINE = re.compile(rb"(" + TOKEN + rb") ([\x21-\x7e]+) HTTP/([0-9])\.([0-9])")
#: One header line: a token, a colon right after it (no whitespace: RFC 9112 §5.1),
#: then a value of field-vchars, SP and HTAB (obs-text allowed; controls are not).
_FIELD_LINE = rb"(?:" + TOKEN + rb":[\t\x20-\x7e\x80-\xff]*\r\n)"
_FIELD_BLOCK = re.compile(_FIELD_LINE + rb"*")
#: The header values framing depends on, found in a block that is already valid.
#: The value is taken whole and stripped in Python: `(.*?)[\t ]*\r` would backtrack
#: quadratically on a long run of spaces (16 KiB of them: half a second).
_FRAMING_FIELDS = re.compile(
    rb"^(content-length|transfer-encoding|host|upgrade):([^\r]*)\r$",
    re.IGNORECASE | re.MULTILINE,
)
_FRAMING_TRAILER = re.compile(
    rb"^(?:content-length|transfer-encoding):", re.IGNORECASE | re.MULTILINE
)
_CONTENT_LENGTH = re.compile(rb"[0-9]{1,18}")
_CODING = re.compile(rb"[\t ]*(" + TOKEN + rb")[\t ]*")
#: RFC 3986 uri-host (reg-name or IP literal) and an optional port.
_HOST = re.compile(rb"(?:\[[0-9A-Fa-f:.]+\]|[A-Za-z0-9\-._~!$&'()*+,;=%]*)(?::[0-9]*)?")
_ABSOLUTE_FORM = re.compile(rb"[A-Za-z][A-Za-z0-9+.\-]*://[\x21-\x7e]*")
#: judge_head's verdict for a body framed by chunks.
CHUNKED = -1


class FramingError(Exception):
    """The request breaks the framing rules; answer `status` and close."""

    def __init__(self, status: int, reason: str) -> None:
        super().__init__(reason)
        self.status = status


def judge_head(head: bytes, max_headers: int) -> tuple[int, bool]:
    """How a valid head frames its body: (Content-Length, or CHUNKED; whether it asks
    for an Upgrade). FramingError for anything the rules do not allow. Pure, so its
    verdicts can be cached."""
    line_end = head.find(b"\r\n")
    request_line = _REQUEST_LINE.fullmatch(head, 0, line_end)
    if request_line is None:
        raise FramingError(400, "malformed request line")
    method, target, major, minor = request_line.groups()
    if (major, minor) not in ((b"1", b"1"), (b"1", b"0")):
        raise FramingError(505, f"HTTP/{major.decode()}.{minor.decode()} is not supported")
    block = head[line_end + 2 : -2]
    if _FIELD_BLOCK.fullmatch(block) is None:
        raise FramingError(400, "malformed header line (obs-fold, space before colon...)")
    if block.count(b"\r\n") > max_headers:
        raise FramingError(431, "too many header lines")
    if method == b"CONNECT":
        raise FramingError(501, "CONNECT is not supported (rrproxy does not tunnel)")
    if target[:1] != b"/":
        if target == b"*":
            if method != b"OPTIONS":
                raise FramingError(400, "the asterisk form is for OPTIONS only")
        elif _ABSOLUTE_FORM.fullmatch(target) is None:
            raise FramingError(400, "malformed request target")
    lengths: list[bytes] = []
    codings: list[bytes] = []
    hosts: list[bytes] = []
    upgrade = False
    for name, raw_value in _FRAMING_FIELDS.findall(block):
        value = raw_value.strip(b" \t")
        first = name[:1].lower()
        if first == b"c":
            lengths.append(value)
        elif first == b"t":
            codings.append(value)
        elif first == b"h":
            hosts.append(value)
        else:
            upgrade = True
    http11 = minor == b"1"
    if len(hosts) > 1 or (http11 and not hosts):
        raise FramingError(400, "an HTTP/1.1 request needs exactly one Host header")
    if hosts and _HOST.fullmatch(hosts[0]) is None:
        raise FramingError(400, "malformed Host header")
    if codings:
        if lengths:
            raise FramingError(400, "both Content-Length and Transfer-Encoding")
        if not http11:
            raise FramingError(400, "Transfer-Encoding in an HTTP/1.0 request")
        if len(codings) > 1:
            raise FramingError(400, "more than one Transfer-Encoding header")
        _check_codings(codings[0])
        return CHUNKED, upgrade
    if len(lengths) > 1:
        raise FramingError(400, "more than one Content-Length header")
    if lengths:
        if _CONTENT_LENGTH.fullmatch(lengths[0]) is None:
            raise FramingError(400, "malformed Content-Length")
        return int(lengths[0]), upgrade
    return 0, upgrade


def _check_codings(value: bytes) -> None:
    codings = []
    for element in value.split(b","):
        match = _CODING.fullmatch(element)
        if match is None:
            raise FramingError(400, "malformed Transfer-Encoding")
        codings.append(match.group(1).lower())
    # RFC 9112 §6.3: chunked must be the final coding, and only once.
    if codings[-1] != b"chunked" or codings.count(b"chunked") > 1:
        raise FramingError(400, "chunked is not the final transfer coding")
    if len(codings) > 1:
        raise FramingError(501, "only the chunked transfer coding is supported")


def judge_trailers(block: bytes, max_size: int, max_lines: int) -> None:
    """A chunked body's complete trailer block (its lines, each ending in CRLF):
    FramingError unless it is well formed, within the head's limits and free of
    framing fields."""
    if _FIELD_BLOCK.fullmatch(block) is None:
        raise FramingError(400, "malformed trailer line")
    if len(block) > max_size or block.count(b"\r\n") > max_lines:
        raise FramingError(431, "trailers larger than the limit")
    if _FRAMING_TRAILER.search(block) is not None:
        # RFC 9110 §6.5.1: framing fields never belong in trailers (llhttp and
        # gunicorn refuse them too).
        raise FramingError(400, "Content-Length or Transfer-Encoding in trailers")


__all__ = ["CHUNKED", "TOKEN", "FramingError", "judge_head", "judge_trailers"]
