"""The smallest app: `rrproxy --workers 4 workers.hello:handler`."""

from rrproxy import Request, Response

_HEADERS = [("content-type", "text/plain")]


async def handler(request: Request) -> Response:
    return Response(200, b"Hello, world!\n", _HEADERS)
