"""Awaits 50 ms per request (a database or API call): workers are idle, not busy."""

import trio

from rrproxy import Request, Response

_HEADERS = [("content-type", "text/plain")]


async def handler(request: Request) -> Response:
    await trio.sleep(0.05)
    return Response(200, b"done\n", _HEADERS)
