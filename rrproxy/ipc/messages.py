"""The front <-> worker message format, with no I/O (h11 style: bytes in, events out).

Every message is one SOCK_SEQPACKET datagram: a one-byte tag, then either a fixed
binary body (the per-connection hot path: handoff and its answer) or a JSON object
(everything rare: hello, configure, stats, stop). A file descriptor travels beside
a message as SCM_RIGHTS ancillary data; which messages carry one is fixed here.

Decoding validates every field's type, so a worker that sends garbage is detected
here and never reaches the supervisor's logic.
"""

from __future__ import annotations

import dataclasses
import functools
import json
import struct
import types
import typing
from collections.abc import Iterable
from dataclasses import dataclass
from typing import Any, ClassVar

#: Bumped on any incompatible change; the front refuses a worker whose Hello differs.
PROTOCOL_VERSION = 4

#: Upper bounds (seconds) of the request latency histogram buckets; the last bucket
#: (beyond the final bound) is +Inf. Prometheus's defaults start at 5 ms, where every
#: hello-world request landed in the first bucket: these resolve 100 us to 10 s in
#: 1-2.5-5 steps, so p50/p99 of fast handlers mean something.
LATENCY_BUCKETS = (
    0.0001, 0.00025, 0.0005, 0.001, 0.0025, 0.005, 0.01, 0.025,
    0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0,
)  # fmt: skip

#: Upper bound for one datagram. Big enough for stats and state values, far below
#: the socket buffer, so a worker can never make the front allocate much.
MAX_MESSAGE_SIZE = 256 * 1024
#: Deepest nesting of lists and objects accepted in a free-form (`object`) field. A
#: worker could otherwise send a 50,000-deep payload that recursion chokes on later.
MAX_NESTING = 32


class ProtocolError(Exception):
    """A datagram that is not a valid message (unknown tag, bad body, wrong field type)."""


@dataclass(frozen=True, slots=True)
class Message:
    TAG: ClassVar[int]


# --- hot path: fixed binary bodies -------------------------------------------------


@dataclass(frozen=True, slots=True)
class NewConn(Message):
    """front -> worker: here is a connection (fd attached); answer Taken or Rejected."""

    TAG: ClassVar[int] = 1
    STRUCT: ClassVar[struct.Struct] = struct.Struct("!BQ")
    conn_id: int


@dataclass(frozen=True, slots=True)
class Taken(Message):
    """worker -> front: the worker holds the connection and has read from it (or given
    up on it), so the front may close its copy. Until then the front keeps the fd and
    can re-hand the connection if the worker dies. `active` is the worker's count of
    open connections, so the front's picture stays current for free."""

    TAG: ClassVar[int] = 2
    STRUCT: ClassVar[struct.Struct] = struct.Struct("!BQI")
    conn_id: int
    active: int


@dataclass(frozen=True, slots=True)
class Rejected(Message):
    """worker -> front: the worker will not serve this connection (draining); the
    front hands it to another worker."""

    TAG: ClassVar[int] = 3
    STRUCT: ClassVar[struct.Struct] = struct.Struct("!BQ")
    conn_id: int


@dataclass(frozen=True, slots=True)
class Load(Message):
    """worker -> front: its count of open connections changed (connections closed).
    Coalesced by the worker: one message per burst of closes, not one per close."""

    TAG: ClassVar[int] = 4
    STRUCT: ClassVar[struct.Struct] = struct.Struct("!BI")
    active: int


@dataclass(frozen=True, slots=True)
class NewConns(Message):
    """front -> worker: several connections at once, their fds attached in the same
    order (one sendmsg for a burst of accepts; answered one Taken each)."""

    TAG: ClassVar[int] = 5
    HEAD: ClassVar[struct.Struct] = struct.Struct("!BH")
    conn_ids: tuple[int, ...]


#: Most connections one NewConns carries (fds per SCM_RIGHTS message).
MAX_BATCH = 32

_BINARY: dict[int, type[Message]] = {cls.TAG: cls for cls in (NewConn, Taken, Rejected, Load)}


# --- control: JSON bodies ----------------------------------------------------------


@dataclass(frozen=True, slots=True)
class Hello(Message):
    """worker -> front, first message: who I am and which protocol I speak."""

    TAG: ClassVar[int] = 16
    version: int
    pid: int


@dataclass(frozen=True, slots=True)
class Configure(Message):
    """front -> worker, answer to Hello: everything the worker needs to serve. Under
    the `none` policy the shared listening socket is attached."""

    TAG: ClassVar[int] = 17
    worker_id: int
    config: dict[str, Any]
    #: Listening sockets attached (the ones workers accept from themselves).
    listeners: int = 0
    worker_count: int = 1


@dataclass(frozen=True, slots=True)
class Ready(Message):
    """worker -> front: the app is loaded and the worker serves connections."""

    TAG: ClassVar[int] = 18


@dataclass(frozen=True, slots=True)
class Failed(Message):
    """worker -> front: the worker cannot start (app import error...). `kind` is a
    short machine-readable reason, `message` the one line shown to the user."""

    TAG: ClassVar[int] = 19
    kind: str
    message: str


@dataclass(frozen=True, slots=True)
class Stats(Message):
    """worker -> front, periodic; doubles as the heartbeat, sent from the worker's
    event loop so a blocked loop goes silent."""

    TAG: ClassVar[int] = 20
    connections_total: int
    connections_active: int
    requests_total: int
    #: Responses by status code ("200": n), since the worker started.
    statuses: dict[str, Any] = dataclasses.field(default_factory=dict)
    #: Request latency: counts per bucket of LATENCY_BUCKETS (not cumulative), and
    #: the sum of all latencies in seconds.
    latency_counts: list[Any] = dataclasses.field(default_factory=list)
    latency_sum: float = 0.0


@dataclass(frozen=True, slots=True)
class Stop(Message):
    """front -> worker: stop taking connections, finish in-flight requests (closing
    idle keep-alive connections), then exit; give up after `timeout` seconds."""

    TAG: ClassVar[int] = 21
    timeout: float


@dataclass(frozen=True, slots=True)
class Poll(Message):
    """front -> worker: send a Stats now (for an exact /status)."""

    TAG: ClassVar[int] = 23


@dataclass(frozen=True, slots=True)
class UserMessage(Message):
    """A handler's message (rrproxy.cluster). worker -> front: `to` is "front",
    "all" (broadcast) or a worker id as a string; a non-zero `request_id` asks for a
    Reply saying whether it was delivered. front -> worker: delivered to the
    worker's on_message callbacks, `sender` saying which worker sent it."""

    TAG: ClassVar[int] = 24
    payload: object
    to: str = "front"
    sender: int = 0
    request_id: int = 0


@dataclass(frozen=True, slots=True)
class ClusterInfo(Message):
    """front -> worker: the number of workers changed (scaling)."""

    TAG: ClassVar[int] = 25
    worker_count: int


@dataclass(frozen=True, slots=True)
class ReopenLogs(Message):
    """front -> worker: reopen --log-file (SIGUSR1, for logrotate)."""

    TAG: ClassVar[int] = 26


@dataclass(frozen=True, slots=True)
class StateRequest(Message):
    """worker -> front: one operation on the shared state (rrproxy.state)."""

    TAG: ClassVar[int] = 27
    request_id: int
    op: str
    key: str
    value: object = None
    ttl: float | None = None


@dataclass(frozen=True, slots=True)
class Reply(Message):
    """front -> worker: the answer to the worker's call `request_id` (a StateRequest,
    or a UserMessage that asked whether it was delivered)."""

    TAG: ClassVar[int] = 28
    request_id: int
    ok: bool
    value: object = None
    error: str = ""
    #: What kind of failure `error` is: "" (refused), "full" (the store is at its
    #: memory limit), "dropped" (a message was not delivered).
    kind: str = ""


@dataclass(frozen=True, slots=True)
class Retire(Message):
    """worker -> front: please replace me (e.g. --max-requests reached). The worker
    keeps serving until the front has a replacement ready and sends Stop."""

    TAG: ClassVar[int] = 22
    reason: str


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
    if isinstance(message, NewConn):
        return 1
    if isinstance(message, NewConns):
        return len(message.conn_ids)
    if isinstance(message, Configure):
        return max(0, min(message.listeners, 64))
    return 0


def encode(message: Message) -> bytes:
    """Serialize one message to the bytes of one datagram."""
    cls = type(message)
    if cls is NewConns:
        ids = message.conn_ids  # type: ignore[attr-defined]  # cls is NewConns
        if not 0 < len(ids) <= MAX_BATCH:
            raise ValueError(f"NewConns carries 1 to {MAX_BATCH} connections")
        return NewConns.HEAD.pack(NewConns.TAG, len(ids)) + struct.pack(f"!{len(ids)}Q", *ids)
    if cls in _BINARY_TYPES:
        # Every class in _BINARY_TYPES defines STRUCT; Message itself does not.
        layout: struct.Struct = cls.STRUCT  # type: ignore[attr-defined]
        names: tuple[str, ...] = cls.__slots__
        return layout.pack(cls.TAG, *[getattr(message, n) for n in names])
    body = {f.name: getattr(message, f.name) for f in dataclasses.fields(message)}
    data = bytes([cls.TAG]) + json.dumps(body, separators=(",", ":")).encode()
    if len(data) > MAX_MESSAGE_SIZE:
        raise ValueError(f"{cls.__name__} message of {len(data)} bytes exceeds the limit")
    return data


_BINARY_TYPES = frozenset(_BINARY.values())


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
        layout: struct.Struct = binary.STRUCT  # type: ignore[attr-defined]  # binary classes have one
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
