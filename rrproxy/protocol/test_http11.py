"""The I/O-free HTTP/1.1 server connection, with plain bytes: requests in, the bytes
of responses out. No event loop, no socket: what the limits, keep-alive, bodies,
100-continue, bodiless responses and error answers do is decided here, and the worker
only moves these bytes (worker/test_connection.py checks that part)."""

from __future__ import annotations

import h11
import pytest

from ..errors import BodyTooLarge, MalformedBody
from .http11 import (
    NEED_DATA,
    BodyCut,
    InvalidResponse,
    Limits,
    Reject,
    ServerConnection,
)

GET = b"GET / HTTP/1.1\r\nHost: a\r\n\r\n"


def connection(data: bytes = b"", limits: Limits | None = None) -> ServerConnection:
    core = ServerConnection(limits or Limits())
    if data:
        core.receive_data(data)
    return core


def request(core: ServerConnection) -> h11.Request:
    event = core.next_request()
    assert isinstance(event, h11.Request), event
    return event


def body(core: ServerConnection) -> bytes:
    """The whole body, from what has been fed."""
    pieces = []
    while (chunk := core.next_body_chunk()) is not None:
        assert chunk is not NEED_DATA, "body incomplete"
        assert isinstance(chunk, bytes)
        pieces.append(chunk)
    return b"".join(pieces)


def parse_response(data: bytes) -> tuple[h11.Response, bytes]:
    """Our bytes read back by an h11 client, as a client would."""
    client = h11.Connection(h11.CLIENT)
    client.send(h11.Request(method="GET", target="/", headers=[("host", "a")]))
    client.send(h11.EndOfMessage())
    client.receive_data(data)
    head = client.next_event()
    assert isinstance(head, h11.Response), head
    content = b""
    while True:
        event = client.next_event()
        if isinstance(event, h11.Data):
            content += event.data
        else:
            assert isinstance(event, h11.EndOfMessage), event
            return head, content


def header(response: h11.Response, name: bytes) -> bytes | None:
    values = [v for k, v in response.headers if k == name]
    return values[0] if values else None


# --- requests in ------------------------------------------------------------------


def test_a_request_then_keep_alive_for_the_next() -> None:
    core = connection(GET + b"GET /two HTTP/1.1\r\nHost: a\r\n\r\n")
    assert request(core).target == b"/"
    assert core.headers == [(b"host", b"a")]
    assert body(core) == b""
    head, content = parse_response(core.response(200, [], b"hi"))
    assert (head.status_code, content) == (200, b"hi")
    assert header(head, b"content-length") == b"2"
    assert header(head, b"date") is not None
    assert header(head, b"connection") is None
    assert core.response_complete
    assert core.start_next_request()
    assert request(core).target == b"/two"


def test_bytes_one_at_a_time_make_the_same_request() -> None:
    core = connection()
    for i in range(len(GET) - 1):
        core.receive_data(GET[i : i + 1])
        assert core.next_request() is NEED_DATA
        assert core.head_started
    core.receive_data(GET[-1:])
    assert request(core).method == b"GET"


def test_an_idle_connection_has_not_started_a_head_but_empty_lines_count() -> None:
    core = connection()
    assert not core.head_started
    core.receive_data(b"\r\n")
    assert core.head_started  # or CRLFs alone could hold a connection forever


def test_eof_between_requests_is_a_quiet_close() -> None:
    core = connection(b"")
    core.receive_data(b"")
    assert core.next_request() is None


@pytest.mark.parametrize(
    ("data", "status"),
    [
        (b"GET / HTTP/1.2\r\nHost: a\r\n\r\n", 505),
        (b"GET /" + b"a" * 20_000 + b" HTTP/1.1\r\nHost: a\r\n\r\n", 414),
        (b"GET / HTTP/1.1\r\nHost: a\r\n" + b"X-A: b\r\n" * 101 + b"\r\n", 431),
        (b"GET / HTTP/1.1\r\nHost: a\r\nX: " + b"a" * 17_000 + b"\r\n\r\n", 431),
        (b"CONNECT a:443 HTTP/1.1\r\nHost: a:443\r\n\r\n", 501),
        (b"garbage\r\n\r\n", 400),
        (b"GET / HTTP/1.1\r\n\r\n", 400),  # no Host on 1.1
        (
            b"POST / HTTP/1.1\r\nHost: a\r\nContent-Length: 1\r\n"
            b"Transfer-Encoding: chunked\r\n\r\n",
            400,
        ),
    ],
)
def test_requests_that_break_the_rules_are_rejected_with_their_status(
    data: bytes, status: int
) -> None:
    assert connection(data).next_request() == Reject(status)


def test_a_head_over_the_limit_is_rejected_before_it_ends() -> None:
    core = connection(b"GET / HTTP/1.1\r\nHost: a\r\nX: " + b"a" * 100, Limits(max_head=64))
    assert core.next_request() == Reject(431)


def test_the_header_count_limit_is_configurable() -> None:
    core = connection(b"GET / HTTP/1.1\r\nHost: a\r\nX: 1\r\nY: 2\r\n\r\n", Limits(max_headers=2))
    assert core.next_request() == Reject(431)
    assert request(connection(b"GET / HTTP/1.1\r\nHost: a\r\nX: 1\r\n\r\n", Limits(max_headers=2)))


# --- bodies -------------------------------------------------------------------------


def test_a_content_length_body_in_pieces() -> None:
    core = connection(b"POST / HTTP/1.1\r\nHost: a\r\nContent-Length: 5\r\n\r\nhel")
    request(core)
    assert core.declared_length() == 5
    assert core.next_body_chunk() == b"hel"
    assert core.next_body_chunk() is NEED_DATA
    assert core.body_unread
    core.receive_data(b"lo")
    assert core.next_body_chunk() == b"lo"
    assert core.next_body_chunk() is None
    assert not core.body_unread


def test_a_chunked_body_is_read_whole_and_has_no_declared_length() -> None:
    core = connection(
        b"POST / HTTP/1.1\r\nHost: a\r\nTransfer-Encoding: chunked\r\n\r\n"
        b"3\r\nabc\r\n2;ext=1\r\nde\r\n0\r\nTrailer: x\r\n\r\n"
    )
    request(core)
    assert core.declared_length() is None
    assert body(core) == b"abcde"


def test_a_chunk_over_the_body_limit_is_refused_before_it_is_read() -> None:
    core = connection(
        b"POST / HTTP/1.1\r\nHost: a\r\nTransfer-Encoding: chunked\r\n\r\n10\r\n",
        Limits(max_body=10),
    )
    request(core)
    with pytest.raises(MalformedBody) as caught:
        body(core)
    assert caught.value.status == 413


def test_small_chunks_adding_up_over_the_limit_raise_body_too_large() -> None:
    core = connection(
        b"POST / HTTP/1.1\r\nHost: a\r\nTransfer-Encoding: chunked\r\n\r\n" + b"4\r\nxxxx\r\n" * 3,
        Limits(max_body=10),
    )
    request(core)
    with pytest.raises((BodyTooLarge, MalformedBody)) as caught:
        body(core)
    assert getattr(caught.value, "status", 413) == 413


def test_a_declared_length_over_the_limit_is_visible_before_reading() -> None:
    # The connection answers 413 from this, before the app runs (worker side).
    core = connection(
        b"POST / HTTP/1.1\r\nHost: a\r\nContent-Length: 11\r\n\r\n", Limits(max_body=10)
    )
    request(core)
    assert core.declared_length() == 11


def test_a_malformed_chunk_is_a_malformed_body() -> None:
    core = connection(
        b"POST / HTTP/1.1\r\nHost: a\r\nTransfer-Encoding: chunked\r\n\r\nzz\r\nabc\r\n"
    )
    request(core)
    with pytest.raises(MalformedBody):
        body(core)
    assert core.body_broken


def test_eof_inside_the_body_is_a_cut_not_a_malformed_body() -> None:
    core = connection(b"POST / HTTP/1.1\r\nHost: a\r\nContent-Length: 5\r\n\r\nhel")
    request(core)
    assert core.next_body_chunk() == b"hel"
    core.receive_data(b"")
    with pytest.raises(BodyCut):
        core.next_body_chunk()


def test_100_continue_only_when_the_client_waits_for_it() -> None:
    core = connection(
        b"POST / HTTP/1.1\r\nHost: a\r\nContent-Length: 2\r\nExpect: 100-continue\r\n\r\n"
    )
    request(core)
    assert core.continue_100().startswith(b"HTTP/1.1 100 ")
    assert core.continue_100() == b""  # once
    core.receive_data(b"ok")
    assert body(core) == b"ok"
    assert connection(GET).continue_100() == b""


def test_an_ignored_small_body_already_buffered_keeps_the_connection() -> None:
    core = connection(b"POST / HTTP/1.1\r\nHost: a\r\nContent-Length: 3\r\n\r\nabc" + GET)
    request(core)
    head, _ = parse_response(core.response(200, [], b"done"))
    assert header(head, b"connection") is None
    assert core.start_next_request()
    assert request(core).method == b"GET"


def test_an_unread_body_still_on_its_way_closes_the_connection() -> None:
    core = connection(b"POST / HTTP/1.1\r\nHost: a\r\nContent-Length: 100\r\n\r\nabc")
    request(core)
    head, _ = parse_response(core.response(200, [], b"early"))
    assert header(head, b"connection") == b"close"
    assert not core.start_next_request()


# --- responses out ------------------------------------------------------------------


@pytest.mark.parametrize("status", [204, 304])
def test_204_and_304_carry_no_body_whatever_the_app_gave(status: int) -> None:
    core = connection(GET)
    request(core)
    data = core.response(status, [], b"not sent")
    assert b"not sent" not in data
    assert b"content-length" not in data.lower()


def test_head_gets_the_length_but_not_the_body() -> None:
    core = connection(b"HEAD / HTTP/1.1\r\nHost: a\r\n\r\n")
    request(core)
    data = core.response(200, [], b"twelve bytes", head=True)
    assert data.endswith(b"\r\n\r\n")
    assert b"content-length: 12" in data.lower()


def test_close_is_said_when_asked() -> None:
    core = connection(GET)
    request(core)
    head, _ = parse_response(core.response(200, [], b"", close=True))
    assert header(head, b"connection") == b"close"
    assert not core.start_next_request()


def test_a_streamed_body_is_chunked_without_a_length() -> None:
    core = connection(GET)
    request(core)
    data = core.response(200, [], None)
    data += core.chunk(b"abc") + core.chunk(b"de") + core.end()
    head, content = parse_response(data)
    assert header(head, b"transfer-encoding") == b"chunked"
    assert content == b"abcde"
    assert core.start_next_request()


def test_a_streamed_body_that_breaks_its_own_length_is_refused() -> None:
    core = connection(GET)
    request(core)
    core.response(200, [(b"content-length", b"3")], None)
    with pytest.raises(InvalidResponse):
        core.chunk(b"four")
    short = connection(GET)
    request(short)
    short.response(200, [(b"content-length", b"3")], None)
    short.chunk(b"ab")
    with pytest.raises(InvalidResponse):
        short.end()


def test_an_invalid_response_writes_nothing_so_a_500_can_follow() -> None:
    core = connection(GET)
    request(core)
    with pytest.raises(InvalidResponse):
        core.response(200, [(b"bad header", b"x")], b"")
    head, content = parse_response(core.error(500, written=False))
    assert head.status_code == 500 and content.startswith(b"500")


def test_sendfile_bytes_count_only_under_content_length() -> None:
    core = connection(GET)
    request(core)
    data = core.response(200, [(b"content-length", b"10")], None)
    core.sent_elsewhere(10)
    assert core.end() == b""
    assert data.startswith(b"HTTP/1.1 200")
    chunked = connection(GET)
    request(chunked)
    chunked.response(200, [], None)
    with pytest.raises(InvalidResponse):
        chunked.sent_elsewhere(10)


def test_an_error_answer_closes_and_says_its_status() -> None:
    core = connection(GET)
    request(core)
    head, content = parse_response(core.error(413))
    assert head.status_code == 413
    assert header(head, b"connection") == b"close"
    assert content == b"413 Payload Too Large\n" or content.startswith(b"413 ")


def test_an_error_for_bytes_h11_could_not_parse_is_still_written() -> None:
    core = connection(b"garbage\r\n\r\n")
    assert core.next_request() == Reject(400)
    data = core.error(400)
    assert data.startswith(b"HTTP/1.1 400 Bad Request\r\n")
    assert b"connection: close" in data


def test_no_error_once_a_response_has_begun() -> None:
    core = connection(GET)
    request(core)
    core.response(200, [], None)
    core.chunk(b"partial")
    assert core.error(500) == b""


def test_an_upgrade_answered_without_101_closes_the_connection() -> None:
    upgrade = b"GET /ws HTTP/1.1\r\nHost: a\r\nUpgrade: websocket\r\nConnection: Upgrade\r\n\r\n"
    core = connection(upgrade + b"GET /smuggled HTTP/1.1\r\nHost: a\r\n\r\n")
    request(core)
    head, _ = parse_response(core.response(404, [], b"no"))
    assert header(head, b"connection") == b"close"
    assert not core.start_next_request()


def test_an_accepted_upgrade_hands_over_what_followed_the_request() -> None:
    upgrade = b"GET /ws HTTP/1.1\r\nHost: a\r\nUpgrade: websocket\r\nConnection: Upgrade\r\n\r\n"
    core = connection(upgrade + b"\x81\x00frames")
    request(core)
    data = core.informational(101, [(b"upgrade", b"websocket"), (b"connection", b"Upgrade")])
    assert data.startswith(b"HTTP/1.1 101 Switching Protocols\r\n")
    assert core.upgraded_data() == b"\x81\x00frames"
