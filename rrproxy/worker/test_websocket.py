"""WebSocket sessions with plain bytes: a wsproto client's frames through
test_connection.py's memory transport, what the server wrote read back by the same
client."""

from __future__ import annotations

from typing import Any

import pytest
from wsproto.connection import Connection, ConnectionType
from wsproto.events import BytesMessage, CloseConnection, Event, TextMessage

from .asgi import ASGIAdapter
from .backend import Backend
from .test_connection import BACKENDS, MemoryTransport, run_connection

UPGRADE = (
    b"GET /ws HTTP/1.1\r\nHost: x\r\nUpgrade: websocket\r\nConnection: Upgrade\r\n"
    b"Sec-WebSocket-Key: dGhlIHNhbXBsZSBub25jZQ==\r\nSec-WebSocket-Version: 13\r\n\r\n"
)
LIMIT = 1000


def run_session(
    backend: Backend, *messages: Event, raw: bytes = b"", pieces: int = 1
) -> tuple[list[Any], list[Any]]:
    """The client sends `messages` (then `raw` frames) after its upgrade request, in
    `pieces` reads; what the app received, and the events the client got back after
    the 101."""
    received: list[Any] = []

    async def app(scope: Any, receive: Any, send: Any) -> None:
        assert scope["type"] == "websocket"
        assert (await receive())["type"] == "websocket.connect"
        await send({"type": "websocket.accept"})
        while True:
            message = await receive()
            received.append(message)
            if message["type"] == "websocket.disconnect":
                return

    client = Connection(ConnectionType.CLIENT)
    frames = b"".join(client.send(message) for message in messages) + raw
    step = -(-len(frames) // pieces)
    reads = [frames[start : start + step] for start in range(0, len(frames), step)]
    transport = MemoryTransport(backend, [UPGRADE + reads[0], *reads[1:]])
    run_connection(backend, transport, app, ASGIAdapter(app), ws_max_size=LIMIT, ws_ping_interval=0)
    written = b"".join(transport.sent)
    head, _, rest = written.partition(b"\r\n\r\n")
    assert head.startswith(b"HTTP/1.1 101 ")
    client.receive_data(rest)
    return received, list(client.events())


def close_code(events: list[Any]) -> int | None:
    closes = [event.code for event in events if isinstance(event, CloseConnection)]
    return closes[0] if closes else None


@pytest.mark.parametrize("backend", BACKENDS, ids=lambda b: b.name)
@pytest.mark.parametrize("char", ["\u00e9", "\u20ac", "\U0001f600"], ids=["2", "3", "4"])
def test_a_text_message_is_limited_in_utf8_bytes_not_characters(
    backend: Backend, char: str
) -> None:
    # Under the limit in characters (by 2 to 4 times), just over it in bytes.
    text = char * (LIMIT // len(char.encode("utf-8")) + 1)
    assert len(text) < LIMIT < len(text.encode("utf-8"))
    received, events = run_session(backend, TextMessage(data=text))
    assert close_code(events) == 1009
    assert received == [{"type": "websocket.disconnect", "code": 1009}]


@pytest.mark.parametrize("backend", BACKENDS, ids=lambda b: b.name)
def test_a_binary_message_over_the_limit_is_refused(backend: Backend) -> None:
    received, events = run_session(backend, BytesMessage(data=b"x" * (LIMIT + 1)))
    assert close_code(events) == 1009
    assert received == [{"type": "websocket.disconnect", "code": 1009}]


@pytest.mark.parametrize("backend", BACKENDS, ids=lambda b: b.name)
def test_a_text_message_in_fragments_is_limited_in_bytes(backend: Backend) -> None:
    piece = "\u20ac" * (LIMIT // 6 + 1)  # over half the limit in bytes, a sixth in chars
    fragments = [
        TextMessage(data=piece, message_finished=False),
        TextMessage(data=piece, message_finished=False),
        TextMessage(data="!", message_finished=True),
    ]
    received, events = run_session(backend, *fragments)
    assert close_code(events) == 1009
    assert received == [{"type": "websocket.disconnect", "code": 1009}]


@pytest.mark.parametrize("backend", BACKENDS, ids=lambda b: b.name)
def test_messages_at_the_limit_in_bytes_are_delivered(backend: Backend) -> None:
    text = "\u00e9" * (LIMIT // 2)  # exactly LIMIT bytes
    data = b"\xff" * LIMIT
    received, events = run_session(
        backend, TextMessage(data=text), BytesMessage(data=data), CloseConnection(code=1000)
    )
    assert received[:2] == [
        {"type": "websocket.receive", "text": text},
        {"type": "websocket.receive", "bytes": data},
    ]
    assert close_code(events) == 1000


def client_frame(opcode: int, payload: bytes, fin: bool) -> bytes:
    """One masked client frame (payload under 126 bytes), built by hand."""
    mask = b"\x01\x02\x03\x04"
    masked = bytes(byte ^ mask[i % 4] for i, byte in enumerate(payload))
    return bytes([(0x80 if fin else 0) | opcode, 0x80 | len(payload)]) + mask + masked


@pytest.mark.parametrize("backend", BACKENDS, ids=lambda b: b.name)
def test_empty_fragments_do_not_pile_up_in_memory(backend: Backend) -> None:
    """Each fragment was kept in a list until the message ended, empty ones too: a
    client sending endless empty continuation frames (6 bytes each) grew the
    worker's memory by 8 bytes or more per frame, --ws-max-size never reached."""
    import tracemalloc

    count = 30_000  # (slow under tracemalloc: the session has 5 s)
    raw = (
        client_frame(0x1, b"a", fin=False)
        + client_frame(0x0, b"", fin=False) * count
        + client_frame(0x0, b"b", fin=True)
    )
    tracemalloc.start()
    try:
        received, _ = run_session(backend, raw=raw, pieces=200)
        _, peak = tracemalloc.get_traced_memory()
    finally:
        tracemalloc.stop()
    assert received[0] == {"type": "websocket.receive", "text": "ab"}
    # The reads are a copy of the frames, 6 bytes each (~8 per frame measured in
    # all); the list of fragments made it ~16.
    assert peak < 12 * count
