"""A fake Redis for RedisBackend's unit tests: an in-memory server that answers RESP
and records every command, streams to it, and the trio driver that opens them."""

from __future__ import annotations

import hiredis
import trio

from ..worker.backend import Stream
from ..worker.trio.backend import TrioBackend
from .redis import RedisBackend


def _bulk(value: bytes | None) -> bytes:
    return b"$-1\r\n" if value is None else b"$%d\r\n%s\r\n" % (len(value), value)


class FakeRedis:
    """Commands in, RESP out, and a log of every command per connection."""

    def __init__(self) -> None:
        self.data: dict[bytes, bytes] = {}
        self.commands: list[list[bytes]] = []
        self.connects = 0
        self.streams: list[FakeStream] = []
        #: Why the next connection attempts fail (an exception to raise), if they do.
        self.refuse: Exception | None = None
        #: Seconds each reply takes.
        self.delay = 0.0
        #: Answer nothing at all (a hung server).
        self.silent = False
        #: Deliver replies this many bytes at a time.
        self.chunk = 65536
        self.password: bytes | None = None

    def answer(self, command: list[bytes]) -> bytes:
        self.commands.append(command)
        name, *args = command
        if name == b"AUTH":
            if self.password is not None and args[-1] != self.password:
                return b"-WRONGPASS invalid username-password pair\r\n"
            return b"+OK\r\n"
        if name == b"SELECT":
            return b"+OK\r\n"
        if name == b"GET":
            return _bulk(self.data.get(args[0]))
        if name == b"SET":
            self.data[args[0]] = args[1]
            return b"+OK\r\n"
        if name == b"DEL":
            return b":%d\r\n" % (self.data.pop(args[0], None) is not None)
        if name == b"INCRBY":
            try:
                value = int(self.data.get(args[0], b"0")) + int(args[1])
            except ValueError:
                return b"-ERR value is not an integer or out of range\r\n"
            self.data[args[0]] = b"%d" % value
            return b":%d\r\n" % value
        if name == b"PEXPIRE":
            return b":%d\r\n" % (args[0] in self.data)
        if name == b"GARBAGE":
            return b"!nonsense\r\n"
        return b"-ERR unknown command\r\n"

    def sent(self) -> list[list[bytes]]:
        """The commands since the last call."""
        commands, self.commands = self.commands, []
        return commands


class FakeStream:
    def __init__(self, server: FakeRedis) -> None:
        self.server = server
        self.reader = hiredis.Reader()
        self.outbox = bytearray()
        self.closed = False
        #: The server side went away (a Redis restart): reads give EOF.
        self.dropped = False

    async def send_all(self, data: bytes) -> None:
        if self.closed or self.dropped:
            raise trio.BrokenResourceError("gone")
        self.reader.feed(data)
        while (command := self.reader.gets()) is not False:
            self.outbox += self.server.answer(command)

    async def receive_some(self, max_bytes: int) -> bytes:
        if self.dropped:
            return b""
        if self.server.silent:
            await trio.sleep_forever()
        if self.server.delay:
            await trio.sleep(self.server.delay)
        size = min(max_bytes, self.server.chunk)
        data, self.outbox = bytes(self.outbox[:size]), self.outbox[size:]
        assert data, "the client read with no reply on its way"
        return data

    async def aclose(self) -> None:
        self.closed = True


class FakeBackend(TrioBackend):
    """The trio driver, with TCP connections to the FakeRedis."""

    def __init__(self, server: FakeRedis) -> None:
        self.server = server
        self.opened: list[tuple[str, int, str | None]] = []

    async def open_tcp_stream(  # type: ignore[override]
        self, host: str, port: int, tls_hostname: str | None = None
    ) -> Stream:
        server = self.server
        server.connects += 1
        self.opened.append((host, port, tls_hostname))
        if server.refuse is not None:
            raise server.refuse
        if server.silent:
            await trio.sleep_forever()
        stream = FakeStream(server)
        server.streams.append(stream)
        return stream


def client(url: str = "redis://cache:6379/0") -> tuple[RedisBackend, FakeRedis, FakeBackend]:
    server = FakeRedis()
    backend = FakeBackend(server)
    return RedisBackend(url, backend), server, backend
