"""Says exactly what the app was given: method, target, every header pair and the
body, as latin-1 text (one character per byte), for the conformance corpus."""

from __future__ import annotations

from rrproxy import Request, Response


async def handler(request: Request) -> Response:
    body = await request.body()
    return Response.json(
        {
            "method": request.method,
            "target": request.target.decode("latin-1"),
            "headers": [[k.decode("latin-1"), v.decode("latin-1")] for k, v in request.headers.raw],
            "body": body.decode("latin-1"),
        }
    )
