"""App factories (--factory): sync and async, and the mistakes people make."""

from __future__ import annotations

import asyncio


def create_asgi_app():
    async def app(scope, receive, send):
        if scope["type"] != "http":
            return
        await send({"type": "http.response.start", "status": 200, "headers": []})
        await send({"type": "http.response.body", "body": b"built by a factory"})

    return app


async def create_app_on_the_loop():
    """Builds something bound to the running loop, as an asyncpg pool would be."""
    built_on = asyncio.get_running_loop()
    lock = asyncio.Lock()
    await asyncio.sleep(0)

    async def app(scope, receive, send):
        if scope["type"] != "http":
            return
        async with lock:  # would fail on another loop
            same = asyncio.get_running_loop() is built_on
        await send({"type": "http.response.start", "status": 200, "headers": []})
        await send({"type": "http.response.body", "body": f"same loop: {same}".encode()})

    return app


def create_wsgi_app():
    def app(environ, start_response):
        start_response("200 OK", [("content-type", "text/plain")])
        return [b"wsgi from a factory"]

    return app


def factory_that_raises():
    raise RuntimeError("no database configured")


def factory_returning_nothing():
    return None
