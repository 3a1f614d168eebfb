"""The `rr` accept loop: the front takes every connection from the public socket and
gives it to the dispatcher. Accepting stops while the front already holds its limit
of connections; new ones then wait in the kernel backlog, not in our fd table."""

from __future__ import annotations

import errno
import logging
import socket

import trio

from .dispatcher import Dispatcher

log = logging.getLogger("rrproxy.front")

_BATCH = 32
#: Out of fds or memory: log, pause, retry (as trio's serve_listeners does).
_RESOURCE_ERRNOS = {errno.EMFILE, errno.ENFILE, errno.ENOMEM, errno.ENOBUFS}
_RESOURCE_PAUSE = 0.1


async def accept_loop(listener: socket.socket, dispatcher: Dispatcher) -> None:
    listener.setblocking(False)
    # The fd, not a Python socket object: the front only passes it on and closes it.
    accept = listener._accept  # type: ignore[attr-defined]  # CPython's, not in typeshed
    submit_many = dispatcher.submit_many
    while True:
        room = dispatcher.room()
        if room <= 0:
            await dispatcher.wait_for_room()
            continue
        batch: list[tuple[int, str | None]] = []
        limit = min(_BATCH, room)
        wait = False
        while len(batch) < limit:
            try:
                fd, address = accept()
            except BlockingIOError:
                wait = True
                break
            except OSError as exc:
                if exc.errno in _RESOURCE_ERRNOS:
                    log.warning("accept failed: %s; pausing %.1f s", exc, _RESOURCE_PAUSE)
                    if batch:
                        submit_many(batch)
                    await trio.sleep(_RESOURCE_PAUSE)
                    batch = []
                    break
                if exc.errno in (errno.ECONNABORTED, errno.EPROTO, errno.EPERM):
                    continue  # the client gave up before we got to it
                raise
            batch.append((fd, address[0] if address else None))
        if batch:
            # Handed out together: one message per worker for the whole batch.
            submit_many(batch)
        if wait:
            await trio.lowlevel.wait_readable(listener)
        else:
            # A full batch: let the rest of the front (acks, signals) run.
            await trio.lowlevel.checkpoint()
