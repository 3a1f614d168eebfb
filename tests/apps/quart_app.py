"""A Quart app (asyncio-only: it needs a running asyncio loop)."""

from __future__ import annotations

import asyncio
import os

from quart import Quart, jsonify, request, websocket

app = Quart(__name__)


@app.route("/")
async def index():
    await asyncio.sleep(0.001)
    return jsonify(
        framework="quart", pid=os.getpid(), loop=type(asyncio.get_running_loop()).__name__
    )


@app.route("/items/<int:item>")
async def item(item: int):
    return jsonify(item=item, query=request.args.get("q"))


@app.route("/echo", methods=["POST"])
async def echo():
    body = await request.get_data()
    return jsonify(length=len(body), text=body.decode())


@app.websocket("/ws")
async def ws():
    while True:
        message = await websocket.receive()
        await websocket.send(f"quart: {message}")
