"""`--state redis://host:port/db`: rrproxy.state on a real Redis server.

A small RESP client on the worker's event loop (trio or asyncio streams, through the
worker's Backend), replies parsed by hiredis. Each worker keeps a pool of connections;
when Redis is down, calls fail at once with StateUnavailable (503) and the pool
reconnects with a growing delay (0.1 s doubling to 5 s).

Values are stored so that Redis itself can work on them: integers as plain decimal
strings (so INCRBY is atomic in Redis), other JSON values as "j" + JSON, bytes as
"b" + the raw bytes.
"""

from __future__ import annotations

import base64
import json
import os
from collections import deque
from typing import Any
from urllib.parse import unquote, urlsplit

import hiredis

from ..worker.backend import Backend, Event, Stream
from .backend import StateError, StateUnavailable

POOL_SIZE = 4
CONNECT_TIMEOUT = 2.0
BACKOFF_INITIAL = 0.1
BACKOFF_MAX = 5.0


def parse_url(url: str) -> dict[str, Any]:
    """The connection options in a redis:// or rediss:// (TLS) URL; ValueError for
    anything else. The password falls back to $RRPROXY_REDIS_PASSWORD."""
    parts = urlsplit(url)
    if parts.scheme not in ("redis", "rediss"):
        raise ValueError(f"--state must be memory or redis://host:port/db, got {_masked(url)!r}")
    db = parts.path.strip("/") or "0"
    if not db.isdigit():
        raise ValueError(f"--state {_masked(url)}: the database must be a number")
    try:
        port = parts.port  # None when not given; ValueError for "abc", "-1" or 99999
    except ValueError:
        port = 0
    if port == 0:
        raise ValueError(f"--state {_masked(url)}: the port must be a number from 1 to 65535")
    return {
        "host": parts.hostname or "127.0.0.1",
        "port": port or 6379,
        "db": int(db),
        "password": unquote(parts.password)
        if parts.password
        else os.environ.get("RRPROXY_REDIS_PASSWORD"),
        "username": unquote(parts.username) if parts.username else None,
        "tls": parts.scheme == "rediss",
    }


def _masked(url: str) -> str:
    """The URL with its password replaced, for error messages: they reach the
    terminal and the logs (the standard: redis-py's and SQLAlchemy's URL reprs)."""
    parts = urlsplit(url)
    if parts.password is None:
        return url
    user, _, host = parts.netloc.rpartition("@")
    name = user.partition(":")[0]
    return parts._replace(netloc=f"{name}:***@{host}").geturl()


def _command(*args: Any) -> bytes:
    out = [b"*%d\r\n" % len(args)]
    for arg in args:
        data = arg if isinstance(arg, bytes) else str(arg).encode()
        out.append(b"$%d\r\n%s\r\n" % (len(data), data))
    return b"".join(out)


class _Connection:
    def __init__(self, stream: Stream) -> None:
        self.stream = stream
        self.reader = hiredis.Reader()

    async def call(self, *args: Any) -> Any:
        await self.stream.send_all(_command(*args))
        while True:
            reply = self.reader.gets()
            if reply is not False:
                if isinstance(reply, hiredis.ReplyError):
                    raise StateError(f"redis: {reply}")
                return reply
            data = await self.stream.receive_some(65536)
            if not data:
                raise ConnectionError("redis closed the connection")
            self.reader.feed(data)


class _Slots:
    """A FIFO counting semaphore on the worker's Backend (whose Event is all the two
    loops share): a freed slot is handed to the longest waiter, so no caller starves
    and every waiter is woken in turn."""

    def __init__(self, backend: Backend, size: int) -> None:
        self.backend = backend
        self.free = size
        self._waiters: deque[Event] = deque()

    async def acquire(self) -> None:
        if self.free > 0 and not self._waiters:
            self.free -= 1
            return
        event = self.backend.event()
        self._waiters.append(event)
        try:
            await event.wait()
        except BaseException:
            if event in self._waiters:
                self._waiters.remove(event)
            else:
                self.release()  # handed a slot just as it was cancelled: pass it on
            raise

    def release(self) -> None:
        if self._waiters:
            self._waiters.popleft().set()
        else:
            self.free += 1


class RedisBackend:
    """Implements the same `request(op, key, value, ttl)` as the memory client."""

    def __init__(self, url: str, backend: Backend) -> None:
        self.options = parse_url(url)
        self.backend = backend
        self._idle: list[_Connection] = []
        self._slots = _Slots(backend, POOL_SIZE)
        self._down_until = 0.0
        self._backoff = BACKOFF_INITIAL

    async def _connect(self) -> _Connection:
        options = self.options
        with self.backend.move_on_after(CONNECT_TIMEOUT):
            stream = await self.backend.open_tcp_stream(
                options["host"], options["port"], options["host"] if options["tls"] else None
            )
            connection = _Connection(stream)
            try:
                if options["password"]:
                    auth = ([options["username"]] if options["username"] else []) + [
                        options["password"]
                    ]
                    await connection.call("AUTH", *auth)
                if options["db"]:
                    await connection.call("SELECT", options["db"])
            except BaseException:
                # A refused password, a timeout or a cancel: the stream is ours.
                await _close_quietly(stream)
                raise
            return connection
        raise TimeoutError(f"no connection within {CONNECT_TIMEOUT:g} s") from None

    async def _execute(self, *args: Any) -> Any:
        now = self.backend.current_time()
        if now < self._down_until:
            raise StateUnavailable("redis is unreachable (retrying)")
        await self._slots.acquire()
        try:
            return await self._execute_pooled(*args)
        finally:
            self._slots.release()

    async def _execute_pooled(self, *args: Any) -> Any:
        # A pooled connection may have died with a Redis restart: one retry on a
        # fresh connection tells that apart from Redis being down.
        for attempt in (1, 2):
            connection = self._idle.pop() if self._idle else None
            reused = connection is not None
            try:
                if connection is None:
                    connection = await self._connect()
                with self.backend.move_on_after(CONNECT_TIMEOUT * 2) as scope:
                    result = await connection.call(*args)
                if scope.cancelled_caught:
                    raise TimeoutError("redis did not answer in time")
            except StateError:
                if connection is not None:
                    self._idle.append(connection)
                raise
            except Exception as exc:  # OSError, timeouts, hiredis.ProtocolError...
                if connection is not None:
                    await _close_quietly(connection.stream)
                if reused and attempt == 1:
                    continue
                self._down_until = self.backend.current_time() + self._backoff
                self._backoff = min(self._backoff * 2, BACKOFF_MAX)
                raise StateUnavailable(f"redis is unreachable: {exc}") from None
            except BaseException:
                if connection is not None:
                    # Cancelled midway (the client went away): the reply may still
                    # arrive, and the next caller would read it as its own.
                    await _close_quietly(connection.stream)
                raise
            self._backoff = BACKOFF_INITIAL
            self._idle.append(connection)
            return result
        raise StateUnavailable("redis is unreachable")

    async def request(self, op: str, key: str, value: Any = None, ttl: float | None = None) -> Any:
        if op == "get":
            return _from_redis(await self._execute("GET", key))
        if op == "set":
            args: list[str | bytes | int] = ["SET", key, _to_redis(value)]
            if ttl is not None:
                args += ["PX", max(1, int(ttl * 1000))]
            await self._execute(*args)
            return True
        if op == "delete":
            return bool(await self._execute("DEL", key))
        if op == "incr":
            try:
                return await self._execute("INCRBY", key, int(value))
            except StateUnavailable:
                raise
            except StateError as exc:
                raise StateError(f"the value of {key!r} is not an integer ({exc})") from None
        if op == "expire":
            return bool(await self._execute("PEXPIRE", key, max(1, int((ttl or 0) * 1000))))
        raise StateError(f"unknown operation {op!r}")


async def _close_quietly(stream: Stream) -> None:
    try:
        await stream.aclose()
    except Exception:
        pass


def _to_redis(tagged: dict[str, Any]) -> bytes:
    if tagged["t"] == "bytes":
        return b"b" + base64.b64decode(tagged["v"])
    value = tagged["v"]
    if isinstance(value, int) and not isinstance(value, bool):
        return str(value).encode()
    return b"j" + json.dumps(value, separators=(",", ":")).encode()


def _from_redis(raw: bytes | None) -> Any:
    if raw is None:
        return None
    if raw[:1] == b"b":
        return {"t": "bytes", "v": base64.b64encode(raw[1:]).decode()}
    if raw[:1] == b"j":
        return {"t": "json", "v": json.loads(raw[1:])}
    try:
        return {"t": "json", "v": int(raw)}
    except ValueError:
        raise StateError("the stored value is not in rrproxy's format") from None


__all__ = ["RedisBackend", "parse_url"]
