"""Health checks, once a second at most: heartbeats, unread channels, memory, stopped
processes holding connections, and workers that belong to no slot.

Heartbeats are each worker's Stats, sent from its event loop, so a handler that
blocks the loop silences them: after --timeout the worker is killed and its slot
restarts it (gunicorn's `timeout`). A worker above --max-memory is recycled
(replacement first, then drain).
"""

from __future__ import annotations

import logging
from typing import TYPE_CHECKING

import trio

from .process import WorkerProcess, WorkerState

if TYPE_CHECKING:
    from .supervisor import Supervisor

log = logging.getLogger("rrproxy.front")

#: How often health is checked, at most.
INTERVAL = 1.0


async def watch(supervisor: Supervisor) -> None:
    """Check every worker (and sweep expired state) until cancelled, at most every
    second, more often with a short --timeout."""
    config = supervisor.config
    timeout = config.timeout
    interval = INTERVAL if timeout <= 0 else min(INTERVAL, timeout / 4)
    while True:
        await trio.sleep(interval)
        supervisor.state_store.sweep()
        for worker in list(supervisor.workers):
            check(supervisor, worker)


def check(supervisor: Supervisor, worker: WorkerProcess) -> None:
    """One worker's health: membership and memory if ready; a stopped process, a
    missing heartbeat or an unread channel if ready or draining (killed then)."""
    config = supervisor.config
    if worker.state is WorkerState.READY:
        _check_membership(supervisor, worker)
        _check_memory(supervisor, worker)
    if worker.state not in (WorkerState.READY, WorkerState.DRAINING):
        return
    _check_stopped(supervisor, worker)
    timeout = config.timeout
    if timeout <= 0:
        return
    now = trio.current_time()
    silent = now - worker.last_heard
    # What is really unread now (queued, or refused and not writable since), not
    # whether a handoff was once refused: a healthy worker that caught up is not
    # killed for it.
    unread_since = worker.channel.blocked_since
    unread_for = now - unread_since if unread_since is not None else 0.0
    if silent > timeout or unread_for > timeout:
        what = (
            f"sent no heartbeat for {silent:.1f} s"
            if silent > timeout
            else f"has not read its channel for {unread_for:.1f} s"
        )
        log.error(
            "worker %d (pid %d) is unresponsive: it %s (--timeout %g); killing it",
            worker.slot_id,
            worker.pid,
            what,
            timeout,
        )
        worker.failure = f"unresponsive: {what}"
        worker.kill()


def _check_membership(supervisor: Supervisor, worker: WorkerProcess) -> None:
    """A ready worker is its slot's current one or the replacement being started;
    anything else is a stray that would serve outside supervision (a race the slot
    logic should prevent: this makes sure it cannot last)."""
    slot = supervisor.slots.get(worker.slot_id)
    if slot is not None and worker in (slot.current, slot.incoming):
        return
    log.error("worker %d (pid %d) belongs to no slot; stopping it", worker.slot_id, worker.pid)
    supervisor.stop_worker(worker)


def _check_memory(supervisor: Supervisor, worker: WorkerProcess) -> None:
    max_memory = supervisor.config.max_memory
    if not max_memory:
        return
    rss = worker.rss_bytes()
    slot = supervisor.slots.get(worker.slot_id)
    if rss is not None and rss > max_memory and slot and slot.current is worker:
        supervisor.recycle(
            slot,
            f"resident memory {rss / 2**20:.0f} MiB above --max-memory "
            f"{max_memory / 2**20:.0f} MiB",
        )


def _check_stopped(supervisor: Supervisor, worker: WorkerProcess) -> None:
    """A stopped process (SIGSTOP, a debugger) reads nothing: connections handed to it
    would wait for the whole --timeout. After --handoff-timeout it is killed, and
    the connections it never read go to another worker."""
    deadline = supervisor.config.handoff_timeout
    if deadline <= 0 or worker.oldest_unacked_age() <= deadline:
        return
    if worker.process_state() not in ("T", "t"):
        return  # running but busy: --timeout decides
    log.error(
        "worker %d (pid %d) is stopped with %d connection(s) waiting for it for %.1f s "
        "(--handoff-timeout %g); killing it, they go to another worker",
        worker.slot_id,
        worker.pid,
        len(worker.unacked),
        worker.oldest_unacked_age(),
        deadline,
    )
    worker.failure = "stopped while connections waited for it"
    worker.kill()
