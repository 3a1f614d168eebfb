"""About 2 ms of CPU per request (the load-test `cpu` scenario)."""

import time

from rrproxy import Request, Response

_HEADERS = [("content-type", "text/plain")]


def spin(seconds: float) -> int:
    """Burn CPU (not sleep) for about `seconds`: the worker can do nothing else."""
    end = time.perf_counter() + seconds
    count = 0
    while time.perf_counter() < end:
        count += 1
    return count


async def handler(request: Request) -> Response:
    spin(0.002)
    return Response(200, b"done\n", _HEADERS)
