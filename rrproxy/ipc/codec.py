"""Encoding and decoding the messages of messages.py, with no I/O: one message <->
the bytes of one SOCK_SEQPACKET datagram, and how many fds travel beside it.

Decoding validates every field against the dataclass's type hints, so a worker that
sends garbage is detected here and never reaches the supervisor's logic: anything
malformed raises ProtocolError, and nothing else (no RecursionError, no NaN).
"""

from __future__ import annotations

import dataclasses
import functools
import json
import struct
import types
import typing
from collections.abc import Iterable
from typing import Any

from .messages import (
    MAX_BATCH,
    MAX_MESSAGE_SIZE,
    MAX_NESTING,
    ClusterInfo,
    Configure,
    Failed,
    Hello,
    Load,
    Message,
    NewConn,
    NewConns,
    Poll,
    ProtocolError,
    Ready,
    Rejected,
    ReopenLogs,
    Reply,
    Retire,
    StateRequest,
    Stats,
    Stop,
    Taken,
    UserMessage,
)

_BinaryMessage = NewConn | Taken | Rejected | Load
_BINARY: dict[int, type[_BinaryMessage]] = {
    cls.TAG: cls for cls in (NewConn, Taken, Rejected, Load)
}
_JSON: dict[int, type[Message]] = {
    cls.TAG: cls
    for cls in (
        Hello,
        Configure,
        Ready,
        Failed,
        Stats,
        Stop,
        Retire,
        Poll,
        UserMessage,
        ClusterInfo,
        ReopenLogs,
        StateRequest,
        Reply,
    )
}


def fd_count(message: Message) -> int:
    """How many fds travel with this message as SCM_RIGHTS data."""
    match message:
        case NewConn():
            return 1
        case NewConns(conn_ids=ids):
            return len(ids)
        case Configure(listeners=listeners):
            return max(0, min(listeners, 64))
    return 0


def encode(message: Message) -> bytes:
    """Serialize one message to the bytes of one datagram."""
    match message:
        case NewConns(conn_ids=ids):
            if not 0 < len(ids) <= MAX_BATCH:
                raise ValueError(f"NewConns carries 1 to {MAX_BATCH} connections")
            return NewConns.HEAD.pack(NewConns.TAG, len(ids)) + struct.pack(f"!{len(ids)}Q", *ids)
        case NewConn() | Taken() | Rejected() | Load():
            names: tuple[str, ...] = message.__slots__
            return message.STRUCT.pack(message.TAG, *[getattr(message, n) for n in names])
    body = {f.name: getattr(message, f.name) for f in dataclasses.fields(message)}
    data = bytes([message.TAG]) + json.dumps(body, separators=(",", ":")).encode()
    if len(data) > MAX_MESSAGE_SIZE:
        raise ValueError(f"{type(message).__name__} message of {len(data)} bytes exceeds the limit")
    return data


def decode(data: bytes) -> Message:
    """Parse one datagram; raise ProtocolError for anything malformed."""
    if not data:
        raise ProtocolError("empty message")
    if len(data) > MAX_MESSAGE_SIZE:
        raise ProtocolError(f"message of {len(data)} bytes exceeds the limit")
    tag = data[0]
    if tag == NewConns.TAG:
        if len(data) < NewConns.HEAD.size:
            raise ProtocolError("NewConns: short body")
        count = NewConns.HEAD.unpack_from(data)[1]
        if not 0 < count <= MAX_BATCH or len(data) != NewConns.HEAD.size + 8 * count:
            raise ProtocolError(f"NewConns: body of {len(data)} bytes for {count} connections")
        return NewConns(struct.unpack_from(f"!{count}Q", data, NewConns.HEAD.size))
    binary = _BINARY.get(tag)
    if binary is not None:
        layout = binary.STRUCT
        if len(data) != layout.size:
            raise ProtocolError(f"{binary.__name__}: body of {len(data)} bytes")
        return binary(*layout.unpack(data)[1:])
    cls = _JSON.get(tag)
    if cls is None:
        raise ProtocolError(f"unknown message tag {tag}")
    try:
        body = json.loads(data[1:], parse_constant=_no_constants)
    except (ValueError, RecursionError) as exc:  # RecursionError: absurdly deep JSON
        raise ProtocolError(f"{cls.__name__}: body is not JSON ({type(exc).__name__})") from None
    if not isinstance(body, dict):
        raise ProtocolError(f"{cls.__name__}: body is not an object")
    return _from_fields(cls, body)


@functools.cache
def _schema(cls: type[Message]) -> tuple[tuple[dataclasses.Field[Any], Any], ...]:
    """Each field with its resolved type, computed once per message class."""
    hints = typing.get_type_hints(cls)
    return tuple((field, hints[field.name]) for field in dataclasses.fields(cls))


def _no_constants(name: str) -> Any:
    raise ValueError(f"{name} is not a number here")


def _from_fields(cls: type[Message], body: dict[str, Any]) -> Message:
    kwargs: dict[str, Any] = {}
    # Classes are hashable; mypy takes a dataclass's __hash__ (an instance method) for
    # the class object's and rejects it as an lru_cache key.
    schema = _schema(cls)  # type: ignore[arg-type]
    for field, hint in schema:
        if field.name not in body:
            if field.default is dataclasses.MISSING:
                raise ProtocolError(f"{cls.__name__}: missing field {field.name!r}")
            continue
        value = body[field.name]
        if not _type_ok(value, hint):
            raise ProtocolError(
                f"{cls.__name__}: field {field.name!r} has type {type(value).__name__}"
            )
        kwargs[field.name] = value
    unknown = set(body) - {field.name for field, _ in schema}
    if unknown:
        raise ProtocolError(f"{cls.__name__}: unknown fields {sorted(unknown)}")
    return cls(**kwargs)


def _type_ok(value: Any, hint: Any) -> bool:
    if hint is object:
        return _nesting(value) <= MAX_NESTING
    origin = typing.get_origin(hint)
    if origin in (typing.Union, types.UnionType):
        return any(_type_ok(value, arg) for arg in typing.get_args(hint))
    if hint is type(None):
        return value is None
    if hint is str:
        # JSON allows lone surrogates ("\ud800"); they cannot be encoded, logged to
        # a UTF-8 file or used as a key, so they never get past here.
        return isinstance(value, str) and _encodable(value)
    if hint is float:
        return isinstance(value, int | float) and not isinstance(value, bool)
    if hint is int:
        return isinstance(value, int) and not isinstance(value, bool)
    base = origin or hint
    if base is dict or base is list:
        return isinstance(value, base) and _nesting(value) <= MAX_NESTING
    return isinstance(value, base)


def _encodable(text: str) -> bool:
    try:
        text.encode("utf-8")
    except UnicodeEncodeError:
        return False
    return True


def _nesting(value: Any) -> int:
    """Depth of nested lists/objects, computed without recursion (and bounded work:
    the datagram is at most MAX_MESSAGE_SIZE bytes)."""
    deepest = 0
    stack = [(value, 1)]
    while stack:
        item, depth = stack.pop()
        children: Iterable[Any]
        if isinstance(item, dict):
            children = item.values()
        elif isinstance(item, list):
            children = item
        else:
            continue
        if depth > deepest:
            deepest = depth
            if deepest > MAX_NESTING:
                return deepest
        stack.extend((child, depth + 1) for child in children)
    return deepest
