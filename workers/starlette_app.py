"""A Starlette app (routes, JSON, form upload, streaming, WebSocket, lifespan state):
`rrproxy --workers 2 workers.starlette_app:app`."""

from __future__ import annotations

import contextlib
import os

from starlette.applications import Starlette
from starlette.requests import Request
from starlette.responses import JSONResponse, PlainTextResponse, StreamingResponse
from starlette.routing import Route, WebSocketRoute
from starlette.websockets import WebSocket, WebSocketDisconnect


@contextlib.asynccontextmanager
async def lifespan(app: Starlette):
    yield {"greeting": "hello from lifespan", "started_in": os.getpid()}


async def home(request: Request) -> PlainTextResponse:
    return PlainTextResponse(f"{request.state.greeting} (pid {os.getpid()})")


async def info(request: Request) -> JSONResponse:
    return JSONResponse(
        {
            "path": request.url.path,
            "root_path": request.scope.get("root_path"),
            "query": dict(request.query_params),
            "client": request.client.host if request.client else None,
            "started_in": request.state.started_in,
            "pid": os.getpid(),
        }
    )


async def upload(request: Request) -> JSONResponse:
    form = await request.form()
    upload = form["file"]
    data = await upload.read()
    return JSONResponse({"name": form["name"], "filename": upload.filename, "size": len(data)})


async def echo(request: Request) -> PlainTextResponse:
    return PlainTextResponse(await request.body())


async def stream(request: Request) -> StreamingResponse:
    async def numbers():
        for i in range(int(request.query_params.get("n", "5"))):
            yield f"{i}\n"

    return StreamingResponse(numbers(), media_type="text/plain")


async def ws_echo(websocket: WebSocket) -> None:
    await websocket.accept()
    try:
        while True:
            message = await websocket.receive()
            if message["type"] == "websocket.disconnect":
                return
            if message.get("text") is not None:
                if message["text"] == "close-please":
                    await websocket.close(code=4001)
                    return
                await websocket.send_text("echo: " + message["text"])
            else:
                await websocket.send_bytes(message["bytes"][::-1])
    except WebSocketDisconnect:
        pass


async def ws_denied(websocket: WebSocket) -> None:
    await websocket.close(code=1008)


app = Starlette(
    routes=[
        Route("/", home),
        Route("/info", info),
        Route("/upload", upload, methods=["POST"]),
        Route("/echo", echo, methods=["POST"]),
        Route("/stream", stream),
        WebSocketRoute("/ws", ws_echo),
        WebSocketRoute("/ws-denied", ws_denied),
    ],
    lifespan=lifespan,
)
