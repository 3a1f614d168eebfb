"""Replacing workers without dropping a request: the rolling reload (SIGHUP), and
recycling one slot (--max-memory, --max-requests, a protocol breach, a worker that
does not read its channel).

The new worker starts beside the old one; only once it is ready does it take the
slot, and the old one is taken out of rotation and drains. Whatever happens in the
meantime (the old worker dies, the slot is scaled away, rrproxy stops), a slot never
ends up with two workers in rotation: the replacement checks the slot again before
it takes it, and stands down if the slot is no longer the one it was started for.
"""

from __future__ import annotations

import logging
from typing import TYPE_CHECKING

import trio

from .process import Slot, WorkerProcess, WorkerState

if TYPE_CHECKING:
    from .supervisor import Supervisor

log = logging.getLogger("rrproxy.front")


class Replacer:
    """Replaces the supervisor's workers: one slot at a time (recycle), or all of them
    in batches (reload)."""

    def __init__(self, supervisor: Supervisor) -> None:
        self.supervisor = supervisor
        self.reloading = False

    def retire(self, worker: WorkerProcess, reason: str) -> None:
        """A worker asked to be replaced (request limit) or broke the protocol: recycle
        its slot, if it is still the slot's ready worker."""
        slot = self.supervisor.slots.get(worker.slot_id)
        if slot is None or slot.current is not worker or worker.state is not WorkerState.READY:
            return
        self.recycle(slot, reason)

    def unread(self, worker: WorkerProcess) -> None:
        """The worker leaves its channel unread: its messages are being dropped. Said and
        acted on once per process."""
        if worker.dropped_messages != 1:
            return
        log.error(
            "worker %d (pid %d) leaves its messages unread (%d bytes queued); messages to "
            "it are dropped and it is being replaced",
            worker.slot_id,
            worker.pid,
            worker.channel.backlog_bytes,
        )
        self.retire(worker, "it does not read its messages")

    def recycle(self, slot: Slot, reason: str) -> None:
        """Replace the slot's worker in the background, unless the slot is going away;
        one asked for during a replacement follows it."""
        supervisor = self.supervisor
        if supervisor.stopping or slot.removed:
            return
        if slot.replacing:
            slot.recycle_pending = reason  # once the replacement under way is done
            return
        log.info(
            "recycling worker %d (pid %d): %s",
            slot.id,
            slot.current.pid if slot.current else 0,
            reason,
        )
        supervisor.nursery.start_soon(self.replace, slot)

    async def replace(self, slot: Slot) -> bool:
        """Start the slot's new worker, wait until it is ready, then take the old one
        out of rotation and let it drain. If the new one does not become ready, the
        old one keeps serving and False is returned. A slot with no worker (backing
        off) has nothing to replace: its next start imports the current code."""
        supervisor = self.supervisor
        while slot.replacing:  # one at a time per slot; ours starts after it
            await slot.replacement_done.wait()
        if supervisor.stopping or slot.removed:
            return False
        old = slot.current
        if old is None:
            return True
        slot.replacing = True
        slot.replacement_done = trio.Event()
        try:
            new = await supervisor.start_worker(slot)
            if new is None:
                return False
            slot.incoming = new
            with trio.move_on_after(supervisor.config.ready_timeout + 1):
                async with trio.open_nursery() as race:

                    async def first_of(event: trio.Event) -> None:
                        await event.wait()
                        race.cancel_scope.cancel()

                    race.start_soon(first_of, new.ready)
                    race.start_soon(first_of, new.exited)
            if not new.ready.is_set() or new.exited.is_set():
                new.kill()
                log.error(
                    "replacement for worker %d failed (%s); worker %d (pid %s) keeps serving",
                    slot.id,
                    new.failure or new.describe_exit(),
                    slot.id,
                    old.pid,
                )
                return False
            if supervisor.stopping or slot.removed or slot.current not in (old, None):
                # The slot changed under us (scaled away, stopping, restarted): the
                # new worker must not become a second one in rotation.
                log.info("worker %d: replacement no longer needed; stopping it", slot.id)
                supervisor.stop_worker(new)
                return False
            slot.current = new
            if not old.exited.is_set():
                supervisor.stop_worker(old)
                await old.exited.wait()
            return True
        finally:
            slot.incoming = None
            slot.replacing = False
            slot.replacement_done.set()
            pending, slot.recycle_pending = slot.recycle_pending, None
            if pending and slot.current is not None and not supervisor.stopping:
                self.recycle(slot, pending)

    async def reload(self) -> bool:
        """Rolling reload: replace workers --reload-batch at a time, each new one
        importing the app afresh. Stops at the first replacement that fails, keeping
        the old workers of the remaining slots."""
        if not self.begin_reload():
            return False
        return await self.run_reload()

    def begin_reload(self) -> bool:
        """Claim the reload (synchronously, so a second request in the same tick is
        refused); False if one is under way or rrproxy is stopping. The caller then
        runs run_reload()."""
        if self.reloading or self.supervisor.stopping:
            log.warning("a reload is already under way or rrproxy is stopping; ignoring")
            return False
        self.reloading = True
        return True

    async def run_reload(self) -> bool:
        """The reload claimed by begin_reload(); whether every slot was replaced."""
        supervisor = self.supervisor
        try:
            if supervisor.config.preload and not await supervisor.spawner.start_fork_server():
                log.error("reload aborted: the remaining workers keep their old code")
                return False
            ids = sorted(supervisor.slots)
            batch = max(1, supervisor.config.reload_batch)
            log.info("rolling reload of %d workers, %d at a time", len(ids), batch)
            for start in range(0, len(ids), batch):
                results: list[bool] = []
                async with trio.open_nursery() as nursery:
                    for slot_id in ids[start : start + batch]:
                        slot = supervisor.slots.get(slot_id)
                        if slot is not None and not slot.removed:
                            nursery.start_soon(self._replace_into, slot, results)
                if not all(results):
                    log.error("reload aborted: the remaining workers keep their old code")
                    return False
            log.info("reload complete: %d workers replaced", len(ids))
            return True
        finally:
            self.reloading = False

    async def _replace_into(self, slot: Slot, results: list[bool]) -> None:
        ok = await self.replace(slot)
        # A slot scaled away during the reload is not a failed reload.
        results.append(ok or slot.removed or self.supervisor.stopping)
