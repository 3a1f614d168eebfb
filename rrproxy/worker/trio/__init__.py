"""The trio driver: the worker's logic on trio (the default for native handlers)."""

from .backend import BACKEND

__all__ = ["BACKEND"]
