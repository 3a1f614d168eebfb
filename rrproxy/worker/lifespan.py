"""The ASGI lifespan protocol (startup and shutdown), run in a task of the worker."""

from __future__ import annotations

import logging
from typing import TYPE_CHECKING, Any

from .asgi import ASGI_VERSION, ASYNCIO_HINT, ASGIApp, Message, ProtocolViolation, asyncio_on_trio
from .backend import Backend, Queue, QueueClosed

if TYPE_CHECKING:
    from .backend import TaskGroup

log = logging.getLogger("rrproxy.asgi")


class LifespanFailed(Exception):
    """startup.failed, or the app raised during startup with --lifespan on."""


class Lifespan:
    """Runs the app's lifespan protocol in a task of the worker."""

    def __init__(self, app: ASGIApp, mode: str, state: dict[str, Any], backend: Backend) -> None:
        self.app = app
        self.mode = mode
        self.state = state
        self.backend = backend
        self.supported = mode != "off"
        self._inbox = Queue(backend)
        self._startup_done = backend.event()
        self._shutdown_done = backend.event()
        self._failure: str | None = None
        self._sent_anything = False

    async def startup(self, tasks: TaskGroup, timeout: float) -> None:
        """Send lifespan.startup and wait up to `timeout` for the app's answer; raises
        LifespanFailed if the app says it failed or never answers. Apps without lifespan support
        are skipped."""
        if not self.supported:
            return
        tasks.start_soon(self._run)
        self._inbox.put({"type": "lifespan.startup"})
        with self.backend.move_on_after(timeout) as scope:
            await self._startup_done.wait()
        if scope.cancelled_caught:
            raise LifespanFailed(f"lifespan startup did not complete within {timeout:g} s")
        if self._failure is not None:
            raise LifespanFailed(self._failure)

    async def shutdown(self, timeout: float) -> None:
        """Send lifespan.shutdown and wait up to `timeout` for the app to finish it."""
        if not self.supported or self._failure is not None or self._inbox.closed:
            return
        self._inbox.put({"type": "lifespan.shutdown"})
        with self.backend.move_on_after(timeout):
            await self._shutdown_done.wait()

    async def _run(self) -> None:
        scope = {"type": "lifespan", "asgi": ASGI_VERSION, "state": self.state}
        try:
            await self.app(scope, self._receive, self._send)
        except Exception as exc:
            if self.mode == "auto" and not self._sent_anything:
                log.info(
                    "ASGI lifespan unsupported by the app (%s: %s); continuing without",
                    type(exc).__name__,
                    exc,
                )
                self.supported = False
            else:
                log.exception("ASGI lifespan raised")
                self._failure = f"lifespan raised {type(exc).__name__}: {exc}"
                if asyncio_on_trio(self.backend, exc):
                    self._failure += f" ({ASYNCIO_HINT})"
        finally:
            self._inbox.close()
            self._startup_done.set()
            self._shutdown_done.set()

    async def _receive(self) -> Message:
        try:
            message: Message = await self._inbox.get()
        except QueueClosed:
            raise ProtocolViolation("lifespan receive() after the lifespan ended") from None
        return message

    async def _send(self, message: Message) -> None:
        self._sent_anything = True
        kind = message["type"]
        if kind == "lifespan.startup.complete":
            self._startup_done.set()
        elif kind == "lifespan.startup.failed":
            self._failure = message.get("message") or "lifespan startup failed"
            self._startup_done.set()
        elif kind in ("lifespan.shutdown.complete", "lifespan.shutdown.failed"):
            if kind.endswith("failed"):
                log.error("lifespan shutdown failed: %s", message.get("message", ""))
            self._shutdown_done.set()
        else:
            raise ProtocolViolation(f"unexpected lifespan message {kind!r}")


__all__ = ["Lifespan", "LifespanFailed"]
