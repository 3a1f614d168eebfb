"""The `rr` accept loop: the front takes every connection from the public socket and
gives it to the dispatcher. Accepting stops while the front already holds its limit
of connections; new ones then wait in the kernel backlog, not in our fd table."""

from __future__ import annotations

import logging
import socket
from typing import Any

import trio

from ..listeners import AcceptEnd, accept_batch
from .dispatcher import Dispatcher

log = logging.getLogger("rrproxy.front")

_BATCH = 32
_RESOURCE_PAUSE = 0.1


async def accept_loop(listener: socket.socket, dispatcher: Dispatcher) -> None:
    """Accept from `listener` until cancelled and give every connection to the
    dispatcher, in batches of up to 32 that are handed out together. Pauses while
    the dispatcher has no room, and for 100 ms when out of fds or memory."""
    listener.setblocking(False)
    # The fd, not a Python socket object: the front only passes it on and closes it.
    accept = listener._accept  # type: ignore[attr-defined]  # CPython's, not in typeshed
    submit_many = dispatcher.submit_many
    while True:
        room = dispatcher.room()
        if room <= 0:
            await dispatcher.wait_for_room()
            continue
        accepted: list[tuple[int, Any]] = []
        end, error = accept_batch(accept, min(_BATCH, room), accepted)
        if accepted:
            # Handed out together: one message per worker for the whole batch.
            submit_many([(fd, address[0] if address else None) for fd, address in accepted])
        if end is AcceptEnd.DRAINED:
            await trio.lowlevel.wait_readable(listener)
        elif end is AcceptEnd.LIMIT:
            # A full batch: let the rest of the front (acks, signals) run.
            await trio.lowlevel.checkpoint()
        elif end is AcceptEnd.OUT_OF_RESOURCES:
            log.warning("accept failed: %s; pausing %.1f s", error, _RESOURCE_PAUSE)
            await trio.sleep(_RESOURCE_PAUSE)
        else:
            log.error("accept stopped on %s: %s", listener.getsockname(), error)
            return
