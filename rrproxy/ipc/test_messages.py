from __future__ import annotations

import json

import pytest
from hypothesis import given
from hypothesis import strategies as st

from .codec import decode, encode, fd_count
from .messages import (
    MAX_BATCH,
    MAX_MESSAGE_SIZE,
    Configure,
    Failed,
    Hello,
    Load,
    Message,
    NewConn,
    NewConns,
    ProtocolError,
    Ready,
    Rejected,
    Stats,
    Stop,
    Taken,
)

EXAMPLES = [
    NewConn(1),
    NewConn(2**64 - 1),
    Taken(7, 3),
    Load(12),
    Rejected(9),
    Hello(version=1, pid=1234),
    Configure(worker_id=3, config={"app": "a:b", "keep_alive": 5.0}, listeners=1),
    Ready(),
    Failed(kind="app", message="cannot import module 'x'"),
    Stats(connections_total=10, connections_active=2, requests_total=30),
    Stop(timeout=30.0),
]


@pytest.mark.parametrize("message", EXAMPLES, ids=lambda m: type(m).__name__)
def test_round_trip(message: Message) -> None:
    assert decode(encode(message)) == message


def test_hot_path_messages_are_small() -> None:
    assert len(encode(NewConn(5))) == 9
    assert len(encode(Taken(5, 1))) == 13
    assert len(encode(Load(5))) == 5


def test_which_messages_carry_an_fd() -> None:
    assert fd_count(NewConn(1)) == 1
    assert fd_count(NewConns((1, 2, 3))) == 3
    assert fd_count(Configure(1, {}, listeners=1)) == 1
    assert fd_count(Configure(1, {}, listeners=0)) == 0
    assert fd_count(Taken(1, 0)) == 0


def test_new_conns_round_trip_and_bounds() -> None:
    message = NewConns((1, 2, 2**64 - 1))
    assert decode(encode(message)) == message
    with pytest.raises(ValueError):
        encode(NewConns(()))
    with pytest.raises(ValueError):
        encode(NewConns(tuple(range(MAX_BATCH + 1))))
    data = encode(NewConns((1, 2)))
    for bad in (data[:-1], data + b"x", data[:1], bytes([data[0], 0, 0])):
        with pytest.raises(ProtocolError):
            decode(bad)


@pytest.mark.parametrize(
    ("data", "reason"),
    [
        (b"", "empty"),
        (b"\xff", "unknown message tag"),
        (b"\x01\x00", "body of 2 bytes"),
        (bytes([Hello.TAG]) + b"not json", "not JSON"),
        (bytes([Hello.TAG]) + b"[1]", "not an object"),
        (bytes([Hello.TAG]) + b'{"version":1}', "missing field 'pid'"),
        (bytes([Hello.TAG]) + b'{"version":"1","pid":2}', "field 'version' has type str"),
        (bytes([Hello.TAG]) + b'{"version":true,"pid":2}', "field 'version' has type bool"),
        (bytes([Hello.TAG]) + b'{"version":1,"pid":2,"x":0}', "unknown fields"),
        (bytes([Stop.TAG]) + b'{"timeout":"soon"}', "field 'timeout'"),
        (bytes([Hello.TAG]) + b"x" * MAX_MESSAGE_SIZE, "exceeds the limit"),
    ],
)
def test_garbage_is_a_protocol_error(data: bytes, reason: str) -> None:
    with pytest.raises(ProtocolError, match=reason):
        decode(data)


def test_float_fields_accept_integers() -> None:
    assert decode(bytes([Stop.TAG]) + b'{"timeout":3}') == Stop(3)


def test_oversized_message_is_refused_at_encode() -> None:
    with pytest.raises(ValueError, match="exceeds the limit"):
        encode(Failed(kind="app", message="x" * MAX_MESSAGE_SIZE))


@given(st.binary(max_size=300))
def test_decode_never_raises_anything_but_protocol_error(data: bytes) -> None:
    try:
        decode(data)
    except ProtocolError:
        pass


@given(st.dictionaries(st.text(max_size=10), st.integers() | st.text() | st.none(), max_size=4))
def test_decode_of_random_json_objects(body: dict[str, int | str | None]) -> None:
    for cls in (Hello, Stats, Stop, Failed, Configure):
        try:
            message = decode(bytes([cls.TAG]) + json.dumps(body).encode())
        except ProtocolError:
            continue
        assert isinstance(message, cls)
