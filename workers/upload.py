"""Reads the whole request body (the `upload` scenario sends 1 MiB) and says how big."""

from rrproxy import Request, Response

_HEADERS = [("content-type", "text/plain")]


async def handler(request: Request) -> Response:
    size = 0
    async for chunk in request.stream():
        size += len(chunk)
    return Response(200, b"%d\n" % size, _HEADERS)
