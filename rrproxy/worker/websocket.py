"""ASGI WebSockets over wsproto, after h11 has parsed the upgrade request.

The handshake (101) is answered when the app sends websocket.accept; before that the
app may deny with websocket.close (403) or websocket.http.response.*. A reader task
turns frames into websocket.receive messages (with --ws-max-size), answers pings,
and pings an idle peer every --ws-ping-interval.
"""

from __future__ import annotations

import base64
import hashlib
import logging
from typing import TYPE_CHECKING, Any

import h11
from wsproto.connection import Connection, ConnectionState, ConnectionType
from wsproto.events import (
    BytesMessage,
    CloseConnection,
    Ping,
    Pong,
    TextMessage,
)
from wsproto.frame_protocol import CloseReason

from ..errors import ClientDisconnected
from ..protocol.http11 import InvalidResponse
from .asgi import ProtocolViolation, header_list, http_scope, octets
from .backend import Queue, QueueClosed
from .native_response import is_app_error

if TYPE_CHECKING:
    from .backend import TaskGroup
    from .connection import HTTPConnection

log = logging.getLogger("rrproxy.websocket")

_GUID = b"258EAFA5-E914-47DA-95CA-C5AB0DC85B11"
#: The close codes RFC 6455 and IANA define below 3000 (3000-4999 are the apps').
_DEFINED = frozenset(int(reason) for reason in CloseReason)


def is_websocket_upgrade(event: h11.Request, headers: list[tuple[bytes, bytes]]) -> bool:
    """Whether the request asks for a WebSocket (GET with Upgrade: websocket and Connection:
    upgrade)."""
    upgrade = connection = False
    for name, value in headers:
        if name == b"upgrade" and value.lower() == b"websocket":
            upgrade = True
        elif name == b"connection" and b"upgrade" in value.lower():
            connection = True
    return upgrade and connection and event.method == b"GET"


class WebSocketSession:
    """One WebSocket connection for an ASGI app (RFC 6455 through wsproto): the handshake, then
    frames in both directions, with the message size and ping limits."""

    def __init__(self, connection: HTTPConnection, event: h11.Request) -> None:
        self.connection = connection
        self.event = event
        self.config = connection.server.config
        self.backend = connection.server.backend
        self.ws: Connection | None = None
        self.accepted = False
        self.closed = False
        self.denied = False
        self.close_code: int | None = None
        self._connect_sent = False
        #: Messages for the app. Bounded by backpressure: the reader waits for the
        #: app to take them (see _read) rather than queueing without limit.
        self._inbox = Queue(self.backend)
        self._taken = self.backend.event()
        self._denial_status = 0
        self._denial_headers: list[tuple[bytes, bytes]] = []
        self._tasks: TaskGroup | None = None
        self._pong = self.backend.event()

    # --- the ASGI side -------------------------------------------------------------

    async def run(self) -> None:
        """Run the app for the session: check the handshake request (400 if malformed), answer 101
        or the app's denial, then move frames until either side closes."""
        headers = dict(self.connection.core.headers)
        if headers.get(b"sec-websocket-version") != b"13" or b"sec-websocket-key" not in headers:
            await self.connection.send_error(400)
            return
        scope = http_scope(self.connection, self.event, "websocket")
        protocols = headers.get(b"sec-websocket-protocol", b"").decode("latin-1")
        scope["subprotocols"] = [p.strip() for p in protocols.split(",") if p.strip()]
        scope["extensions"] = {"websocket.http.response": {}}
        self.connection.websocket = self
        try:
            async with self.backend.task_group() as tasks:
                self._tasks = tasks
                try:
                    await self.connection.server.handler(scope, self.receive, self.send)
                except ProtocolViolation as exc:
                    log.error("ASGI app broke the WebSocket protocol: %s", exc)
                    if self.accepted and not self.closed:
                        await self._close(1011, "internal error")
                except ClientDisconnected:
                    pass
                except BaseException as exc:
                    if not is_app_error(self.backend, exc):
                        raise  # the loop's cancellation
                    log.exception("ASGI WebSocket app raised")
                    if self.accepted and not self.closed:
                        await self._close(1011, "internal error")
                if not self.accepted and not self.denied:
                    await self._deny(403)
                elif self.accepted and not self.closed:
                    await self._close(1000, "")
                tasks.cancel()
        finally:
            self.connection.websocket = None
            self._inbox.close()

    async def receive(self) -> dict[str, Any]:
        """The app's receive(): websocket.connect first, then each message, then
        websocket.disconnect with its close code."""
        if not self._connect_sent:
            self._connect_sent = True
            return {"type": "websocket.connect"}
        try:
            message: dict[str, Any] = await self._inbox.get()
        except QueueClosed:
            return {"type": "websocket.disconnect", "code": self.close_code or 1006}
        self._taken.set()
        return message

    async def send(self, message: dict[str, Any]) -> None:
        """The app's send(): websocket.accept, websocket.send, websocket.close, or a denial response
        before accepting. Raises ProtocolViolation for messages out of order."""
        kind = message["type"]
        if kind == "websocket.accept":
            if self.accepted or self.denied:
                raise ProtocolViolation("websocket.accept after the handshake was answered")
            await self._accept(message)
        elif kind == "websocket.send":
            if not self.accepted:
                raise ProtocolViolation("websocket.send before websocket.accept")
            if self.closed:
                return  # the peer is gone; like uvicorn, drop silently
            text, data = message.get("text"), message.get("bytes")
            if text is not None:
                if not isinstance(text, str):
                    raise ProtocolViolation(f"websocket.send text is {type(text).__name__}")
                await self._write(TextMessage(data=text))
            elif data is not None:
                await self._write(BytesMessage(data=octets(data, "websocket.send bytes")))
            else:
                raise ProtocolViolation("websocket.send needs text or bytes")
        elif kind == "websocket.close":
            if not self.accepted:
                await self._deny(403)
            else:
                code, reason = message.get("code", 1000), message.get("reason") or ""
                # What a client may receive (RFC 6455 §7.4): 999 or 5000 reached it as a
                # protocol error, and 99999 or a bytes reason failed to send at all.
                # (1005, 1006 and 1015, never sent, wsproto turns into 1000.)
                if not isinstance(code, int) or not (code in _DEFINED or 3000 <= code < 5000):
                    raise ProtocolViolation(f"websocket.close code {code!r} cannot be sent")
                if not isinstance(reason, str):
                    raise ProtocolViolation("websocket.close reason must be str")
                await self._close(code, reason)
        elif kind == "websocket.http.response.start":
            if self.accepted or self.denied:
                raise ProtocolViolation("websocket.http.response.start after the handshake")
            self._denial_status = int(message["status"])
            self._denial_headers = header_list(message.get("headers", ()))
        elif kind == "websocket.http.response.body":
            if not self._denial_status:
                raise ProtocolViolation("websocket.http.response.body before .start")
            await self._deny(
                self._denial_status,
                octets(message.get("body", b""), "websocket.http.response.body's body"),
                self._denial_headers,
                bool(message.get("more_body", False)),
            )
        else:
            raise ProtocolViolation(f"unexpected ASGI message {kind!r} on a WebSocket")

    # --- the wire side -------------------------------------------------------------

    async def _accept(self, message: dict[str, Any]) -> None:
        connection = self.connection
        key = dict(self.connection.core.headers)[b"sec-websocket-key"]
        accept = base64.b64encode(hashlib.sha1(key + _GUID).digest())
        headers = [
            (b"upgrade", b"websocket"),
            (b"connection", b"Upgrade"),
            (b"sec-websocket-accept", accept),
        ]
        if message.get("subprotocol"):
            headers.append((b"sec-websocket-protocol", message["subprotocol"].encode()))
        headers += header_list(message.get("headers", ()))
        await connection.send(connection.core.informational(101, headers))
        # What the client sent after its upgrade request is WebSocket frames: the
        # framing checks held it back from h11 (as raw bytes) until now.
        self.ws = Connection(ConnectionType.SERVER, trailing_data=connection.core.upgraded_data())
        self.accepted = True
        connection.finished(101, 0)
        assert self._tasks is not None
        self._tasks.start_soon(self._read)
        if self.config.ws_ping_interval > 0:
            self._tasks.start_soon(self._keepalive)

    async def _deny(
        self,
        status: int,
        body: bytes = b"",
        headers: list[tuple[bytes, bytes]] | None = None,
        more: bool = False,
    ) -> None:
        connection = self.connection
        core = connection.core
        try:
            if not self.denied:
                self.denied = True
                head = list(headers or [])
                data = core.response(status, head, None if more else body, close=True)
                connection.finished(status, len(body))
                if more and body:
                    data += core.chunk(body)
            else:
                data = core.chunk(body) if body else b""
                if not more:
                    data += core.end()
        except InvalidResponse as exc:
            raise ProtocolViolation(f"invalid denial response: {exc}") from None
        await connection.send(data)

    async def _write(self, event: Any) -> None:
        assert self.ws is not None
        try:
            await self.connection.send(self.ws.send(event))
        except ClientDisconnected:
            self._peer_gone(1006)

    async def _close(self, code: int, why: str) -> None:
        if self.closed or self.ws is None:
            return
        self.closed = True
        if self.ws.state is ConnectionState.OPEN:
            await self._write(CloseConnection(code=code, reason=why))
            if self.close_code is None and self._tasks is not None:
                self._tasks.start_soon(self._close_timeout)

    async def _close_timeout(self) -> None:
        """Our close frame is out: a peer that neither answers it nor hangs up within
        --ws-ping-timeout is given up on (as websockets' close_timeout; uvicorn hangs up at
        once), or an app awaiting websocket.disconnect waited forever."""
        await self.backend.sleep(self.config.ws_ping_timeout)
        if self.close_code is None:
            log.info("WebSocket peer did not answer our close frame; closing")
            self._peer_gone(1006)

    def close_for_restart(self) -> None:
        """Drain timeout reached: tell the client to come back (1012)."""
        if self._tasks is not None and self.accepted and not self.closed:
            self._tasks.start_soon(self._close, 1012, "service restart")

    def client_left(self) -> None:
        """The sweep saw the client leave before the app answered the handshake (no reader
        runs yet): receive() says websocket.disconnect rather than wait forever."""
        self._peer_gone(1006)

    def _peer_gone(self, code: int) -> None:
        if self.close_code is None:
            self.close_code = code
        self.closed = True
        self._inbox.close()

    async def _read(self) -> None:
        ws = self.ws
        assert ws is not None
        limit = self.config.ws_max_size
        # The message so far, in bytes (text as UTF-8, which wsproto has validated):
        # one buffer, not a list of fragments, so neither a flood of empty frames nor
        # tiny ones grow memory beyond --ws-max-size.
        buffer = bytearray()
        io = self.connection.io
        assert io is not None
        data = b"-"  # frames that came with the upgrade request are in `ws` already
        while True:
            for event in ws.events():
                if isinstance(event, TextMessage | BytesMessage):
                    # --ws-max-size is bytes: a text fragment (str, decoded by
                    # wsproto) counts its UTF-8 length, or a client could send 4x the
                    # limit in 4-byte characters.
                    fragment = event.data
                    if isinstance(fragment, str):
                        fragment = fragment.encode("utf-8")
                    if len(buffer) + len(fragment) > limit:
                        await self._close(1009, "message too big")
                        self._peer_gone(1009)
                        return
                    buffer += fragment
                    if event.message_finished:
                        message: dict[str, Any]
                        if isinstance(event, TextMessage):
                            message = {"type": "websocket.receive", "text": buffer.decode()}
                        else:
                            message = {"type": "websocket.receive", "bytes": bytes(buffer)}
                        buffer = bytearray()
                        if self._inbox.closed:
                            return
                        self._inbox.put(message)
                        # Backpressure: a peer faster than the app waits in its
                        # socket, not in our memory (16 messages at most here).
                        while len(self._inbox) >= 16 and not self._inbox.closed:
                            self._taken = self.backend.event()
                            await self._taken.wait()
                elif isinstance(event, Ping):
                    await self._write(event.response())
                elif isinstance(event, Pong):
                    self._pong.set()
                elif isinstance(event, CloseConnection):
                    if ws.state is ConnectionState.REMOTE_CLOSING:
                        await self._write(event.response())
                    self._peer_gone(event.code)
                    return
            if not data:
                self._peer_gone(1006)
                return
            data = await io.receive()
            ws.receive_data(data or None)

    async def _keepalive(self) -> None:
        interval = self.config.ws_ping_interval
        while not self.closed:
            await self.backend.sleep(interval)
            self._pong = self.backend.event()
            await self._write(Ping(payload=b"rrproxy"))
            with self.backend.move_on_after(self.config.ws_ping_timeout) as scope:
                await self._pong.wait()
            if scope.cancelled_caught and not self.closed:
                log.info("WebSocket peer did not answer a ping; closing")
                await self._close(1011, "ping timeout")
                self._peer_gone(1006)
                return


__all__ = ["WebSocketSession", "is_websocket_upgrade"]
