"""The restart rule on its own: plain numbers and worker lives in, decisions out."""

from __future__ import annotations

from dataclasses import dataclass

import pytest

from .backoff import (
    BACKOFF_INITIAL,
    BACKOFF_MAX,
    BACKOFF_RESET_AFTER,
    CRASH_LOOP_AFTER,
    EARLY_DEATH,
    Life,
    Restart,
    RestartStorm,
    after_death,
    after_spawn_failure,
    crash_looping,
    next_delay,
    proved_itself,
    restart_storm,
)


@dataclass(frozen=True)
class Worker:
    """A worker's life as the rule sees it."""

    ready_at: float | None = None
    had_clients: bool = False


NEVER_READY = Worker()


def test_the_readme_numbers() -> None:
    # README, "Process management": 0.1 s doubling to 10 s, reset after 30 s up; 5 deaths
    # in a row, each before ready or within 5 s of it with no client.
    assert (BACKOFF_INITIAL, BACKOFF_MAX, BACKOFF_RESET_AFTER) == (0.1, 10.0, 30.0)
    assert (CRASH_LOOP_AFTER, EARLY_DEATH) == (5, 5.0)


def test_a_worker_that_never_got_ready_has_not_proved_itself() -> None:
    assert not proved_itself(NEVER_READY, 1000.0)
    # A client cannot reach a worker that is not ready; even so, never ready is never proof.
    assert not proved_itself(Worker(None, had_clients=True), 1000.0)


def test_proof_is_a_client_or_early_death_seconds_up() -> None:
    assert not proved_itself(Worker(100.0), 100.0)
    assert not proved_itself(Worker(100.0), 100.0 + EARLY_DEATH - 0.001)
    assert proved_itself(Worker(100.0), 100.0 + EARLY_DEATH)
    assert proved_itself(Worker(100.0, had_clients=True), 100.0)
    # Ready at clock time 0 (trio's MockClock starts there) is still ready.
    assert proved_itself(Worker(0.0), EARLY_DEATH)


def test_deaths_before_ready_count() -> None:
    restart = after_death(0, 0.0, NEVER_READY, 50.0)
    assert restart == Restart(crashes=1, delay=BACKOFF_INITIAL, at=50.0 + BACKOFF_INITIAL)


def test_a_death_soon_after_ready_without_clients_counts() -> None:
    assert after_death(2, 0.4, Worker(50.0), 50.0 + EARLY_DEATH - 0.1).crashes == 3


def test_a_death_after_a_client_reached_the_worker_does_not_count() -> None:
    # A request that crashes the worker must not bring the server down: the run of
    # deaths starts over, however close to the limit it was.
    restart = after_death(CRASH_LOOP_AFTER - 1, 1.6, Worker(50.0, had_clients=True), 50.1)
    assert restart.crashes == 0
    assert not restart.starts_looping


def test_a_death_after_early_death_seconds_does_not_count() -> None:
    assert after_death(3, 0.8, Worker(50.0), 50.0 + EARLY_DEATH).crashes == 0


def test_five_in_a_row_is_crash_looping_and_said_once() -> None:
    crashes, delay, now = 0, 0.0, 0.0
    said = []
    for _ in range(CRASH_LOOP_AFTER + 3):
        restart = after_death(crashes, delay, NEVER_READY, now)
        crashes, delay, now = restart.crashes, restart.delay, restart.at
        said.append(restart.starts_looping)
        looping = crash_looping(crashes, None, now)
        assert looping == (crashes >= CRASH_LOOP_AFTER)
    # Only the fifth death is the moment to log "cannot stay up".
    assert said == [False] * (CRASH_LOOP_AFTER - 1) + [True] + [False] * 3


def test_backoff_doubles_up_to_the_cap() -> None:
    delays = []
    delay = 0.0
    for _ in range(10):
        delay = next_delay(delay, up_for=0.0)
        delays.append(delay)
    assert delays == pytest.approx([0.1, 0.2, 0.4, 0.8, 1.6, 3.2, 6.4, 10.0, 10.0, 10.0])


def test_backoff_starts_over_after_a_worker_stayed_up() -> None:
    assert next_delay(10.0, up_for=BACKOFF_RESET_AFTER - 0.1) == BACKOFF_MAX
    assert next_delay(10.0, up_for=BACKOFF_RESET_AFTER) == BACKOFF_INITIAL
    # Through after_death: ready at 0, died 30 s later, having served.
    restart = after_death(0, 10.0, Worker(0.0, had_clients=True), BACKOFF_RESET_AFTER)
    assert restart == Restart(0, BACKOFF_INITIAL, BACKOFF_RESET_AFTER + BACKOFF_INITIAL)


def test_proving_itself_resets_the_count_but_not_the_backoff() -> None:
    # Up 10 s, then died: it counted as proof (no crash), but was not up long enough
    # to reset the delay, which keeps growing.
    restart = after_death(4, 3.2, Worker(100.0), 110.0)
    assert restart == Restart(0, 6.4, 116.4)


def test_a_failed_spawn_backs_off_without_counting() -> None:
    assert after_spawn_failure(2, 0.4, 7.0) == Restart(2, 0.8, 7.0 + 0.8)
    assert after_spawn_failure(0, 0.0, 7.0) == Restart(0, BACKOFF_INITIAL, 7.0 + BACKOFF_INITIAL)


def test_a_looping_slot_stays_looping_until_its_new_worker_proves_itself() -> None:
    assert not crash_looping(CRASH_LOOP_AFTER - 1, None, 0.0)
    assert crash_looping(CRASH_LOOP_AFTER, None, 0.0)
    # Its next worker is starting, or ready for less than EARLY_DEATH: still looping.
    assert crash_looping(CRASH_LOOP_AFTER, NEVER_READY, 0.0)
    assert crash_looping(CRASH_LOOP_AFTER, Worker(10.0), 12.0)
    # Up EARLY_DEATH, or a client reached it: no longer.
    assert not crash_looping(CRASH_LOOP_AFTER, Worker(10.0), 10.0 + EARLY_DEATH)
    assert not crash_looping(CRASH_LOOP_AFTER, Worker(10.0, had_clients=True), 10.5)


def test_restart_storm_only_when_every_slot_is_crash_looping() -> None:
    looping: tuple[int, Life | None] = (CRASH_LOOP_AFTER, None)
    healthy: tuple[int, Life | None] = (0, Worker(0.0))
    assert restart_storm([looping, looping, looping], 100.0)
    assert not restart_storm([looping, healthy, looping], 100.0)
    # A slot that loops but whose current worker has just proved itself: not a storm.
    assert not restart_storm([looping, (CRASH_LOOP_AFTER, Worker(90.0))], 100.0)
    # Still counting: four deaths is not looping yet.
    assert not restart_storm([looping, (CRASH_LOOP_AFTER - 1, None)], 100.0)
    # No slot at all (everything scaled away) is nothing to give up on.
    assert not restart_storm([], 100.0)


def test_restart_storm_says_why() -> None:
    message = str(RestartStorm(3, "exit code 1"))
    assert "no worker can stay up" in message
    assert f"each of the 3 slots, {CRASH_LOOP_AFTER} times in a row" in message
    assert message.endswith("last: exit code 1")
