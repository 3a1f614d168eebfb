"""The load generator: a trio HTTP/1.1 client, closed-loop (N clients, each sending
its next request when the last is answered) or open-loop (a fixed rate; latency is
measured from when a request was *due*, so a slow server cannot hide its queueing:
no coordinated omission). Loopback only; bounded by its duration.
"""

from __future__ import annotations

import errno
import random
import time
from collections import Counter
from dataclasses import dataclass, field

import trio
from hdrh.histogram import HdrHistogram

from .scenarios import Scenario

_IP_BIND_ADDRESS_NO_PORT = getattr(__import__("socket"), "IP_BIND_ADDRESS_NO_PORT", 24)

#: Latencies are recorded in microseconds, up to 60 s, 3 significant digits.
MAX_LATENCY_US = 60_000_000


@dataclass
class LoadResult:
    duration: float = 0.0
    completed: int = 0
    errors: Counter[str] = field(default_factory=Counter)
    histogram: HdrHistogram = field(default_factory=lambda: HdrHistogram(1, MAX_LATENCY_US, 3))

    @property
    def throughput(self) -> float:
        return self.completed / self.duration if self.duration else 0.0

    def percentile_ms(self, percentile: float) -> float:
        return self.histogram.get_value_at_percentile(percentile) / 1000.0

    def summary(self) -> dict[str, object]:
        return {
            "duration_s": round(self.duration, 3),
            "completed": self.completed,
            "errors": dict(self.errors),
            "throughput_rps": round(self.throughput, 1),
            "latency_ms": {
                "p50": self.percentile_ms(50),
                "p90": self.percentile_ms(90),
                "p99": self.percentile_ms(99),
                "p99.9": self.percentile_ms(99.9),
                "max": self.histogram.get_max_value() / 1000.0,
                "mean": round(self.histogram.get_mean_value() / 1000.0, 3),
            },
        }


class _BadResponse(Exception):
    pass


class Client:
    """One connection's worth of HTTP/1.1, kept minimal so the generator costs
    little CPU: requests are prebuilt bytes, responses need a Content-Length."""

    def __init__(self, host: str, port: int, keep_alive: bool, source: str | None = None) -> None:
        self.host = host
        self.port = port
        self.keep_alive = keep_alive
        self.source = source
        self.sock: trio.socket.SocketType | None = None
        self.buffer = b""

    async def connect(self) -> None:
        sock = trio.socket.socket()
        if self.source:
            # Pick the port at connect() (4-tuple aware), not at bind(): with many
            # short connections, bind()'s search through TIME_WAIT ports gets slow.
            sock.setsockopt(trio.socket.IPPROTO_IP, _IP_BIND_ADDRESS_NO_PORT, 1)
            await sock.bind((self.source, 0))
        await sock.connect((self.host, self.port))
        sock.setsockopt(trio.socket.IPPROTO_TCP, trio.socket.TCP_NODELAY, 1)
        self.sock = sock
        self.buffer = b""

    def close(self) -> None:
        if self.sock is not None:
            self.sock.close()
            self.sock = None

    async def request(self, data: bytes) -> int:
        if self.sock is None:
            await self.connect()
        assert self.sock is not None
        view = memoryview(data)
        while view:
            sent = await self.sock.send(view)
            view = view[sent:]
        status, close = await self._read_response()
        if close or not self.keep_alive:
            # Let the server close first (it said Connection: close), so TIME_WAIT
            # stays on its side and this machine's ports do not run out in a long run.
            with trio.move_on_after(1.0):
                while await self.sock.recv(65536):
                    pass
            self.close()
        return status

    async def _read_response(self) -> tuple[int, bool]:
        assert self.sock is not None
        while b"\r\n\r\n" not in self.buffer:
            chunk = await self.sock.recv(65536)
            if not chunk:
                raise _BadResponse("closed before the response head")
            self.buffer += chunk
        head, _, rest = self.buffer.partition(b"\r\n\r\n")
        lines = head.split(b"\r\n")
        status = int(lines[0].split(b" ", 2)[1])
        length = None
        close = False
        for line in lines[1:]:
            name, _, value = line.partition(b":")
            name = name.strip().lower()
            if name == b"content-length":
                length = int(value)
            elif name == b"connection" and b"close" in value.lower():
                close = True
        if length is None:
            raise _BadResponse("response without Content-Length")
        while len(rest) < length:
            chunk = await self.sock.recv(65536)
            if not chunk:
                raise _BadResponse("closed inside the body")
            rest += chunk
        self.buffer = rest[length:]
        return status, close


def build_request(scenario: Scenario, path: str, keep_alive: bool, body: bytes) -> bytes:
    head = f"{scenario.method} {path} HTTP/1.1\r\nHost: loadtest\r\n"
    if not keep_alive:
        head += "Connection: close\r\n"
    if body:
        head += f"Content-Length: {len(body)}\r\n"
    return head.encode() + b"\r\n" + body


def _error_kind(exc: BaseException) -> str:
    if isinstance(exc, _BadResponse):
        return "bad response"
    if isinstance(exc, ConnectionRefusedError):
        return "connect refused"
    if isinstance(exc, ConnectionResetError | BrokenPipeError):
        return "reset"
    if isinstance(exc, OSError) and exc.errno == errno.ETIMEDOUT:
        return "timeout"
    return type(exc).__name__


async def run_load(
    scenario: Scenario,
    host: str,
    port: int,
    *,
    concurrency: int,
    duration: float,
    keep_alive: bool,
    rate: float | None = None,
    seed: int = 0,
    request_timeout: float = 30.0,
    on_progress: object = None,
    sources: int = 16,
) -> LoadResult:
    """Drive load for `duration` seconds and wait for every request in flight, so
    the server's counts afterwards match what was sent."""
    result = LoadResult()
    body = random.Random(seed).randbytes(scenario.body_size) if scenario.body_size else b""
    requests = {path: build_request(scenario, path, keep_alive, body) for path in ("/", "/slow")}
    started = time.perf_counter()
    deadline = started + duration
    next_due = [0]
    interval = 1.0 / rate if rate else 0.0

    async def one_client(index: int) -> None:
        rng = random.Random(seed * 100_003 + index)
        # Clients come from `sources` loopback addresses (127.0.1.1, 127.0.1.2, ...),
        # so address-based policies (ip-hash) see many clients, as they would live.
        source = f"127.0.1.{1 + index % sources}" if sources > 1 and host == "127.0.0.1" else None
        client = Client(host, port, keep_alive, source)
        try:
            while True:
                if rate:
                    due = started + next_due[0] * interval
                    next_due[0] += 1
                    if due >= deadline:
                        return
                    delay = due - time.perf_counter()
                    if delay > 0:
                        await trio.sleep(delay)
                    begin = due  # measured from when it was due: no coordinated omission
                else:
                    begin = time.perf_counter()
                    if begin >= deadline:
                        return
                data = requests[scenario.next_path(rng)]
                try:
                    with trio.fail_after(request_timeout):
                        status = await client.request(data)
                except (OSError, _BadResponse, trio.TooSlowError) as exc:
                    client.close()
                    kind = "timeout" if isinstance(exc, trio.TooSlowError) else _error_kind(exc)
                    result.errors[kind] += 1
                    continue
                elapsed_us = int((time.perf_counter() - begin) * 1_000_000)
                result.histogram.record_value(max(1, min(elapsed_us, MAX_LATENCY_US)))
                if 200 <= status < 300:
                    result.completed += 1
                else:
                    result.errors[f"HTTP {status}"] += 1
                if on_progress is not None:
                    on_progress()  # type: ignore[operator]
        finally:
            client.close()

    async with trio.open_nursery() as nursery:
        for index in range(concurrency):
            nursery.start_soon(one_client, index)
    result.duration = time.perf_counter() - started
    return result
