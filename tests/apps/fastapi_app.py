"""A FastAPI app using what real ones use: asyncio primitives, aiosqlite, an httpx
AsyncClient, redis.asyncio, a streaming response and a lifespan that opens a pool."""

from __future__ import annotations

import asyncio
import os
from contextlib import asynccontextmanager

import aiosqlite
import httpx
import redis.asyncio as redis_asyncio
from fastapi import FastAPI, Request
from fastapi.responses import StreamingResponse


@asynccontextmanager
async def lifespan(app: FastAPI):
    # A connection pool opened at startup, closed at shutdown.
    app.state.redis = redis_asyncio.from_url(os.environ["FASTAPI_REDIS_URL"], max_connections=4)
    app.state.db = await aiosqlite.connect(":memory:")
    await app.state.db.execute("create table notes (text text)")
    yield
    await app.state.db.close()
    await app.state.redis.aclose()


app = FastAPI(lifespan=lifespan)


@app.get("/gather")
async def gather():
    async def twice(x: int) -> int:
        await asyncio.sleep(0.01)
        return x * 2

    return {"results": await asyncio.gather(*(twice(i) for i in range(5)))}


@app.get("/queue")
async def queue():
    items: asyncio.Queue[int] = asyncio.Queue()

    async def producer() -> None:
        for i in range(3):
            await items.put(i)

    asyncio.get_running_loop().create_task(producer())
    return {"items": [await asyncio.wait_for(items.get(), 5) for _ in range(3)]}


@app.post("/notes")
async def add_note(request: Request):
    text = (await request.body()).decode()
    await app.state.db.execute("insert into notes values (?)", (text,))
    async with app.state.db.execute("select count(*) from notes") as cursor:
        (count,) = await cursor.fetchone()
    return {"count": count}


@app.get("/ping")
async def ping():
    return {"pong": True}


@app.get("/call-self")
async def call_self(request: Request):
    async with httpx.AsyncClient(base_url=str(request.base_url), timeout=5) as client:
        answer = await client.get("/ping")
    return {"status": answer.status_code, "body": answer.json()}


@app.get("/redis")
async def redis_counter():
    return {"count": await app.state.redis.incr("fastapi-hits")}


@app.get("/stream")
async def stream():
    async def parts():
        for i in range(3):
            await asyncio.sleep(0.01)
            yield f"part {i}\n"

    return StreamingResponse(parts(), media_type="text/plain")
