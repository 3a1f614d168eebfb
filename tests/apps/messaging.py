"""Workers talking to each other through rrproxy.cluster."""

from __future__ import annotations

import os
from urllib.parse import parse_qs

from rrproxy import Request, Response, cluster

received: list[object] = []


@cluster.on_message
def remember(message: object, sender: int) -> None:
    received.append({"message": message, "from": sender})


async def handler(request: Request) -> Response | dict:
    query = parse_qs(request.query)
    if request.path == "/broadcast":
        await cluster.broadcast({"hello": query.get("v", ["?"])[0]})
        return {"sent": True}
    if request.path == "/to-front":
        await cluster.send_to_front({"note": "hi front"})
        return {"sent": True}
    if request.path == "/to-worker":
        await cluster.send_to_worker(int(query["id"][0]), "direct")
        return {"sent": True, "by": cluster.worker_id}
    if request.path == "/too-big":
        try:
            await cluster.broadcast("x" * (cluster.MAX_MESSAGE_BYTES + 1))
        except cluster.MessageTooLarge as exc:
            return Response(413, str(exc))
        return {"sent": True}
    return {
        "worker": cluster.worker_id,
        "count": cluster.worker_count,
        "pid": os.getpid(),
        "received": received,
    }
