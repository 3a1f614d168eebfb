"""The hello app as a plain ASGI 3 callable: `rrproxy --workers 2 workers.asgi_hello:app`."""

_HEADERS = [(b"content-type", b"text/plain"), (b"content-length", b"14")]
_START = {"type": "http.response.start", "status": 200, "headers": _HEADERS}
_BODY = {"type": "http.response.body", "body": b"Hello, world!\n"}


async def app(scope, receive, send):
    if scope["type"] == "lifespan":
        while True:
            message = await receive()
            if message["type"] == "lifespan.startup":
                await send({"type": "lifespan.startup.complete"})
            elif message["type"] == "lifespan.shutdown":
                await send({"type": "lifespan.shutdown.complete"})
                return
    await send(_START)
    await send(_BODY)
