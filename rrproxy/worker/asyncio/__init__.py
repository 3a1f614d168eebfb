"""The asyncio driver: the worker's logic on asyncio, or uvloop when installed (the
default for ASGI apps, as most of them need asyncio libraries)."""

from .backend import AsyncioBackend, make_backend

__all__ = ["AsyncioBackend", "make_backend"]
