"""When a slot starts its next worker, and when rrproxy gives up: the restart rule,
with no I/O (times and deaths in, decisions out; the caller passes the clock).

A worker that exits is restarted after an exponential backoff per slot. A worker
that dies before it is ready, or within EARLY_DEATH of it before any client reached
it, "could not stay up". A slot whose workers do so CRASH_LOOP_AFTER times in a row
is crash-looping: it keeps retrying (backing off up to BACKOFF_MAX) and is reported.
rrproxy exits (status 3) only when every slot is crash-looping. A worker that served
a client and died (a request that crashes it, a kill, OOM) proves the code runs: that
never counts, so no client can stop the server by crashing workers. (systemd's and
PM2's restart limits are per unit/app in the same way.)
"""

from __future__ import annotations

from collections.abc import Iterable
from dataclasses import dataclass
from typing import Protocol

BACKOFF_INITIAL = 0.1
BACKOFF_MAX = 10.0
#: A worker that stayed up this long resets its slot's backoff.
BACKOFF_RESET_AFTER = 30.0
#: Deaths in a row, each before the worker served anyone, that make a slot crash-looping.
CRASH_LOOP_AFTER = 5
#: Seconds after Ready within which a death without clients still counts.
EARLY_DEATH = 5.0


class RestartStorm(Exception):
    """No slot can keep a worker up: rrproxy exits 3."""

    def __init__(self, slots: int, last_exit: str | None) -> None:
        super().__init__(
            "no worker can stay up: workers keep dying right after they start (each of "
            f"the {slots} slots, {CRASH_LOOP_AFTER} times in a row); last: {last_exit}"
        )


class Life(Protocol):
    """What the rule needs to know of one worker process (WorkerProcess has it)."""

    @property
    def ready_at(self) -> float | None:
        """Clock time it said Ready (None: it never did)."""

    @property
    def had_clients(self) -> bool:
        """A client reached it (it took or accepted a connection)."""


@dataclass(frozen=True, slots=True)
class Restart:
    """The decision after a slot's worker died, or could not be spawned."""

    #: The slot's deaths in a row that count, this one included.
    crashes: int
    #: Seconds to wait before the next start (the slot's backoff from now on).
    delay: float
    #: Clock time of the next start.
    at: float

    @property
    def starts_looping(self) -> bool:
        """This death made the slot crash-looping: the moment to say so, once."""
        return self.crashes == CRASH_LOOP_AFTER


def proved_itself(worker: Life, now: float) -> bool:
    """The worker got to serve: a client reached it, or it stayed up EARLY_DEATH."""
    if worker.ready_at is None:
        return False
    return worker.had_clients or now - worker.ready_at >= EARLY_DEATH


def next_delay(previous: float, up_for: float) -> float:
    """The backoff after `previous`: BACKOFF_INITIAL, doubling up to BACKOFF_MAX. A
    worker that was up BACKOFF_RESET_AFTER starts it over."""
    if up_for >= BACKOFF_RESET_AFTER:
        previous = 0.0
    return min(previous * 2, BACKOFF_MAX) if previous else BACKOFF_INITIAL


def after_death(crashes: int, delay: float, worker: Life, now: float) -> Restart:
    """A slot's worker died at `now`; `crashes` and `delay` are the slot's so far. The
    death counts unless the worker proved itself, which also ends the run of deaths."""
    up_for = now - worker.ready_at if worker.ready_at is not None else 0.0
    crashes = 0 if proved_itself(worker, now) else crashes + 1
    delay = next_delay(delay, up_for)
    return Restart(crashes, delay, now + delay)


def after_spawn_failure(crashes: int, delay: float, now: float) -> Restart:
    """No process could be started at all (fork or exec failed): retry after the
    backoff. It says nothing about the app, so it does not count as a crash."""
    delay = next_delay(delay, 0.0)
    return Restart(crashes, delay, now + delay)


def crash_looping(crashes: int, current: Life | None, now: float) -> bool:
    """The slot's workers keep dying before they serve anyone, and the one it has now
    (if any) has not proved otherwise yet."""
    if crashes < CRASH_LOOP_AFTER:
        return False
    return current is None or not proved_itself(current, now)


def restart_storm(slots: Iterable[tuple[int, Life | None]], now: float) -> bool:
    """Every slot, given as (crashes, current worker), is crash-looping: nothing can
    serve, so rrproxy gives up. One healthy slot is enough to keep going."""
    looping = [crash_looping(crashes, current, now) for crashes, current in slots]
    return bool(looping) and all(looping)
