"""The Redis backend's pure parts on plain values: the --state URL, the RESP encoding
and the value codec. RedisBackend itself is in test_redis.py."""

from __future__ import annotations

from typing import Any

import hiredis
import pytest

from .backend import StateError
from .redis import _command, _from_redis, _to_redis, parse_url

# --- parse_url ----------------------------------------------------------------------------


def test_parse_url_defaults(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.delenv("RRPROXY_REDIS_PASSWORD", raising=False)
    assert parse_url("redis://") == {
        "host": "127.0.0.1",
        "port": 6379,
        "db": 0,
        "password": None,
        "username": None,
        "tls": False,
    }
    assert parse_url("redis://cache/")["db"] == 0


def test_parse_url_everything(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("RRPROXY_REDIS_PASSWORD", "from-env")
    options = parse_url("rediss://app%3Auser:p%40ss%2Fw@redis.example:7000/3")
    assert options == {
        "host": "redis.example",
        "port": 7000,
        "db": 3,
        "password": "p@ss/w",  # the URL's wins over the environment's
        "username": "app:user",
        "tls": True,
    }
    assert parse_url("redis://[::1]:6380/1")["host"] == "::1"
    assert parse_url("redis://h:1/2")["password"] == "from-env"
    assert parse_url("redis://:secret@h")["password"] == "secret"
    assert parse_url("redis://:secret@h")["username"] is None


@pytest.mark.parametrize(
    ("url", "message"),
    [
        ("memory", "--state must be memory or redis://host:port/db, got 'memory'"),
        ("http://h:6379/0", "--state must be memory or redis://host:port/db, got 'http://h"),
        ("redis://h/zero", "--state redis://h/zero: the database must be a number"),
        ("redis://h/1/2", "--state redis://h/1/2: the database must be a number"),
        ("redis://h/-1", "--state redis://h/-1: the database must be a number"),
    ],
)
def test_parse_url_refuses(url: str, message: str) -> None:
    with pytest.raises(ValueError) as caught:
        parse_url(url)
    assert str(caught.value).startswith(message)


@pytest.mark.parametrize("port", ["abc", "99999", "0", "-1"])
def test_parse_url_refuses_a_port_that_is_not_one_and_masks_the_password(port: str) -> None:
    # urllib's own ValueError says "Port could not be cast to integer value as 'abc'"
    # or "Port out of range 0-65535", naming neither the option nor the URL.
    with pytest.raises(ValueError) as caught:
        parse_url(f"redis://app:s3cret@cache:{port}/0")
    message = str(caught.value)
    assert message == (
        f"--state redis://app:***@cache:{port}/0: the port must be a number from 1 to 65535"
    )
    assert "s3cret" not in message


def test_parse_url_masks_the_password_in_every_refusal() -> None:
    with pytest.raises(ValueError) as caught:
        parse_url("redis://:s3cret@cache/zero")
    assert "s3cret" not in str(caught.value)
    assert str(caught.value).startswith("--state redis://:***@cache/zero:")


def test_parse_url_port_and_ipv6_without_port() -> None:
    assert parse_url("redis://[::1]/0")["port"] == 6379
    assert parse_url("redis://cache:65535")["port"] == 65535


# --- RESP and the value codec ----------------------------------------------------------------


def test_command_is_a_resp_array_of_bulk_strings() -> None:
    assert _command("GET", "k") == b"*2\r\n$3\r\nGET\r\n$1\r\nk\r\n"
    assert _command("SET", "k", b"\x00\r\n", "PX", 1500) == (
        b"*5\r\n$3\r\nSET\r\n$1\r\nk\r\n$3\r\n\x00\r\n\r\n$2\r\nPX\r\n$4\r\n1500\r\n"
    )
    assert _command("GET", "") == b"*2\r\n$3\r\nGET\r\n$0\r\n\r\n"
    # Lengths are in bytes, not characters.
    assert _command("GET", "caf\u00e9") == b"*2\r\n$3\r\nGET\r\n$5\r\ncaf\xc3\xa9\r\n"


def test_command_parses_back() -> None:
    reader = hiredis.Reader()
    reader.feed(_command("INCRBY", "n:\u00e9", -3) + _command("SET", "b", b"\xff" * 1000))
    assert reader.gets() == [b"INCRBY", "n:\u00e9".encode(), b"-3"]
    assert reader.gets() == [b"SET", b"b", b"\xff" * 1000]
    assert reader.gets() is False


def j(value: object) -> dict[str, object]:
    return {"t": "json", "v": value}


@pytest.mark.parametrize(
    ("tagged", "stored"),
    [
        (j(42), b"42"),
        (j(-7), b"-7"),
        (j(0), b"0"),
        (j(2**70), str(2**70).encode()),
        (j(True), b"jtrue"),  # a bool is no counter
        (j(1.5), b"j1.5"),
        (j("42"), b'j"42"'),
        (j(None), b"jnull"),
        (j({"user": 7, "tags": ["a"]}), b'j{"user":7,"tags":["a"]}'),
        (j("caf\u00e9"), b'j"caf\\u00e9"'),
        ({"t": "bytes", "v": "AP8="}, b"b\x00\xff"),
        ({"t": "bytes", "v": ""}, b"b"),
    ],
)
def test_values_round_trip(tagged: dict[str, Any], stored: bytes) -> None:
    assert _to_redis(tagged) == stored
    assert _from_redis(stored) == tagged


def test_missing_values_are_none() -> None:
    assert _from_redis(None) is None


@pytest.mark.parametrize("raw", [b"", b"hello", b"1.5", b"x42", b"\xff"])
def test_values_not_in_rrproxys_format_are_refused(raw: bytes) -> None:
    with pytest.raises(StateError, match="the stored value is not in rrproxy's format"):
        _from_redis(raw)


def test_a_bad_json_value_is_not_silently_accepted() -> None:
    with pytest.raises(ValueError):
        _from_redis(b"j{broken")
