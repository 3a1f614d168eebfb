"""Starts fine and reports ready, then dies a moment later: a restart storm.

The clock starts when lifespan startup completes, right before the worker tells the
front it is ready; timed from import instead, a slow boot on a loaded machine died
before ready, which is a failed boot (exit 2), not a storm (exit 3)."""

import os
import threading


async def handler(scope, receive, send):
    if scope["type"] != "lifespan":
        return
    while True:
        message = await receive()
        if message["type"] == "lifespan.startup":
            await send({"type": "lifespan.startup.complete"})
            threading.Timer(0.3, lambda: os._exit(1)).start()
        elif message["type"] == "lifespan.shutdown":
            await send({"type": "lifespan.shutdown.complete"})
            return
