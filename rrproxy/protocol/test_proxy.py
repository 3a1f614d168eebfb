from __future__ import annotations

import struct

import pytest

from .proxy import V2_SIGNATURE, ProxyHeaderError, ProxyInfo, forwarded_client, parse, trusted


def parsed(data: bytes) -> tuple[ProxyInfo, int]:
    """parse(), for a header that is complete."""
    result = parse(data)
    assert result is not None
    return result


def test_v1() -> None:
    data = b"PROXY TCP4 203.0.113.7 10.0.0.1 51234 80\r\nGET / HTTP/1.1\r\n"
    info, used = parsed(data)
    assert info.client == ("203.0.113.7", 51234)
    assert data[used:] == b"GET / HTTP/1.1\r\n"
    assert parse(b"PROXY TCP4 203.0") is None  # needs more
    assert parsed(b"PROXY UNKNOWN\r\n")[0].client is None
    assert parsed(b"PROXY TCP6 2001:db8::1 ::1 4000 80\r\n")[0].client == ("2001:db8::1", 4000)


@pytest.mark.parametrize(
    "bad",
    [
        b"GET / HTTP/1.1\r\n",
        b"PROXY TCP4 x y 1 2\r\n",
        b"PROXY TCP4 1.2.3.4\r\n",
        b"PROXY " + b"x" * 200,
    ],
)
def test_v1_garbage(bad: bytes) -> None:
    with pytest.raises(ProxyHeaderError):
        parse(bad)


def test_v2() -> None:
    body = bytes([198, 51, 100, 9, 10, 0, 0, 1]) + struct.pack("!HH", 40000, 443)
    data = V2_SIGNATURE + bytes([0x21, 0x11]) + struct.pack("!H", len(body)) + body + b"rest"
    info, used = parsed(data)
    assert info.client == ("198.51.100.9", 40000)
    assert data[used:] == b"rest"
    assert parse(data[:20]) is None
    local = V2_SIGNATURE + bytes([0x20, 0x00]) + struct.pack("!H", 0)
    assert parsed(local)[0].client is None
    with pytest.raises(ProxyHeaderError):
        parse(V2_SIGNATURE[:-1] + b"X" + bytes(4))


def test_forwarded_for_takes_the_rightmost_untrusted_hop() -> None:
    allow = ("127.0.0.1", "10.0.0.0/8")
    assert forwarded_client("203.0.113.9, 10.1.2.3", allow) == "203.0.113.9"
    assert forwarded_client("6.6.6.6, 203.0.113.9", allow) == "203.0.113.9"  # 6.6.6.6 forged
    assert trusted("10.9.9.9", allow) and not trusted("11.0.0.1", allow)
    assert trusted("1.2.3.4", ("*",))
