"""Exercises rrproxy.state from a native handler."""

from __future__ import annotations

from urllib.parse import parse_qs

from rrproxy import Request, Response, state


async def handler(request: Request) -> Response | dict:
    query = {k: v[0] for k, v in parse_qs(request.query).items()}
    key = query.get("key", "k")
    if request.path == "/incr":
        return {
            "value": await state.incr(key, int(query.get("by", "1"))),
            "worker": request.worker_id,
            "client": request.client,
        }
    if request.path == "/set":
        ttl = float(query["ttl"]) if "ttl" in query else None
        value: object = query.get("value", "")
        if query.get("kind") == "bytes":
            value = str(value).encode()
        elif query.get("kind") == "json":
            value = {"nested": [1, 2, {"x": value}]}
        await state.set(key, value, ttl=ttl)
        return {"ok": True}
    if request.path == "/get":
        value = await state.get(key)
        return {
            "value": value.decode() if isinstance(value, bytes) else value,
            "type": type(value).__name__,
        }
    if request.path == "/delete":
        return {"deleted": await state.delete(key)}
    if request.path == "/expire":
        return {"ok": await state.expire(key, float(query["ttl"]))}
    if request.path == "/too-big":
        try:
            await state.set(key, "x" * 200_000)
        except state.StateValueTooLarge as exc:
            return Response(413, str(exc))
    if request.path == "/not-a-number":
        await state.set(key, "text")
        try:
            await state.incr(key)
        except state.StateError as exc:
            return Response(409, str(exc))
    return Response(404, b"")
