"""Raw ASGI apps that each exercise one rule of the spec."""

from __future__ import annotations

import anyio

events: list[str] = []


async def scope_echo(scope, receive, send):
    if scope["type"] != "http":
        return
    chunks = []
    while True:
        message = await receive()
        chunks.append(message)
        if not message.get("more_body"):
            break
    body = repr(
        {
            "type": scope["type"],
            "asgi": scope["asgi"],
            "http_version": scope["http_version"],
            "method": scope["method"],
            "scheme": scope["scheme"],
            "path": scope["path"],
            "raw_path": scope["raw_path"],
            "query_string": scope["query_string"],
            "root_path": scope["root_path"],
            "headers": scope["headers"],
            "client": scope["client"],
            "server": scope["server"],
            "state": scope["state"],
            "messages": [(m["type"], len(m.get("body", b"")), m.get("more_body")) for m in chunks],
        }
    ).encode()
    await send({"type": "http.response.start", "status": 200, "headers": []})
    await send({"type": "http.response.body", "body": body})


async def no_response(scope, receive, send):
    if scope["type"] == "http":
        return


async def out_of_order(scope, receive, send):
    if scope["type"] == "http":
        await send({"type": "http.response.body", "body": b"too early"})


async def half_stream(scope, receive, send):
    if scope["type"] == "http":
        await send({"type": "http.response.start", "status": 200, "headers": []})
        await send({"type": "http.response.body", "body": b"part", "more_body": True})
        raise RuntimeError("broke mid-stream")


async def waits_for_disconnect(scope, receive, send):
    if scope["type"] != "http":
        return
    while (await receive())["type"] != "http.disconnect":
        pass
    import logging

    logging.getLogger("test.asgi").warning("app saw http.disconnect")


async def lifespan_fails(scope, receive, send):
    if scope["type"] == "lifespan":
        await receive()
        await send({"type": "lifespan.startup.failed", "message": "database unreachable"})
        return
    await anyio.sleep(0)
