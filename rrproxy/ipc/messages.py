"""The front <-> worker message format, with no I/O (h11 style: bytes in, events out).

Every message is one SOCK_SEQPACKET datagram: a one-byte tag, then either a fixed
binary body (the per-connection hot path: handoff and its answer) or a JSON object
(everything rare: hello, configure, stats, stop). A file descriptor travels beside
a message as SCM_RIGHTS ancillary data; which messages carry one is fixed here.

The messages are frozen dataclasses; `codec.py` turns them into datagrams and back,
validating every field's type, so a worker that sends garbage is detected there and
never reaches the supervisor's logic.
"""

from __future__ import annotations

import dataclasses
import struct
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
    """Base of every message; each subclass has a unique one-byte TAG."""

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
