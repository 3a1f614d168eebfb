"""A small FastAPI app (pydantic models, a dependency, JSON): what a real ASGI service
imports. `rrproxy --workers 2 workers.fastapi_app:app`; the memory benchmark uses it."""

from __future__ import annotations

from typing import Annotated

from fastapi import Depends, FastAPI
from pydantic import BaseModel

app = FastAPI(title="rrproxy example")


class Item(BaseModel):
    name: str
    price: float
    tags: list[str] = []


def pagination(offset: int = 0, limit: int = 10) -> dict[str, int]:
    return {"offset": offset, "limit": limit}


@app.get("/")
async def home() -> dict[str, str]:
    return {"hello": "world"}


@app.get("/items")
async def items(page: Annotated[dict[str, int], Depends(pagination)]) -> dict[str, object]:
    return {"items": [], **page}


@app.post("/items")
async def create(item: Item) -> Item:
    return item
