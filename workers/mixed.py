"""Mostly quick requests, some 100x slower (`/slow`): the load generator sends 1 in 20
there. A slow request holds its worker's CPU, so every request queued behind it on
that worker waits: the case where round-robin over keep-alive connections suffers."""

from rrproxy import Request, Response
from workers.cpu import spin

_HEADERS = [("content-type", "text/plain")]
FAST = 0.0005
SLOW = FAST * 100


async def handler(request: Request) -> Response:
    spin(SLOW if request.path == "/slow" else FAST)
    return Response(200, b"done\n", _HEADERS)
