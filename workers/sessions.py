"""Per-client sessions in rrproxy.state: a session works whichever worker serves it.

`rrproxy --workers 4 workers.sessions:handler`, then `curl -c jar -b jar localhost:8000/`
a few times: the visit count goes up while the worker changes.
"""

from __future__ import annotations

import secrets
from http.cookies import SimpleCookie

from rrproxy import Request, Response, state

SESSION_TTL = 1800


async def handler(request: Request) -> Response:
    cookie = SimpleCookie(request.headers.get("cookie", ""))
    sid = cookie["sid"].value if "sid" in cookie else None
    session = await state.get(f"session:{sid}") if sid else None
    headers = []
    if session is None:
        sid = secrets.token_urlsafe(16)
        session = {"visits": 0, "workers": []}
        headers.append(("set-cookie", f"sid={sid}; HttpOnly; Path=/; Max-Age={SESSION_TTL}"))
    session["visits"] += 1
    session["workers"].append(request.worker_id)
    await state.set(f"session:{sid}", session, ttl=SESSION_TTL)
    response = Response.json(
        {
            "visits": session["visits"],
            "worker": request.worker_id,
            "seen_by": sorted(set(session["workers"])),
        }
    )
    response.headers.extend(headers)
    return response
