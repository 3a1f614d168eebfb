"""The cluster over time: what the dashboard and `rrproxy status` show as it happens.

Workers report cumulative counters (requests, a latency histogram, status codes) and
the front reads CPU time from /proc; none of that says what is happening *now*. A
sampler in the front records the per-slot counters once a second; this module turns
consecutive samples into rates (req/s, CPU %, handoffs/s), recent percentiles (p50/p99
over the last seconds, from histogram deltas as Prometheus's histogram_quantile does)
and fairness (each slot's share of recent requests, and Jain's index).

No I/O and no clock: samples come in with their time, so it is tested with plain
numbers.
"""

from __future__ import annotations

from collections import deque
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass
from itertools import pairwise
from typing import Any

#: Samples kept: five minutes at one a second (the sparklines' span).
CAPACITY = 300
#: Seconds of history behind the percentiles (enough requests to mean something, short
#: enough to show a change within a few seconds).
PERCENTILE_WINDOW = 10.0
#: Seconds of history behind the fairness figures.
FAIRNESS_WINDOW = 60.0


@dataclass(frozen=True)
class SlotCounters:
    """One worker slot's cumulative counters (over every process it has had)."""

    requests: int
    cpu_seconds: float
    latency_counts: tuple[int, ...]


@dataclass(frozen=True)
class Sample:
    """The cumulative counters at one moment (`at`, in the front's clock's seconds):
    each slot's, the front's CPU time and its handoff counts."""

    at: float
    slots: Mapping[int, SlotCounters]
    front_cpu_seconds: float
    handed_total: int
    rehanded_total: int

    @classmethod
    def from_status(cls, at: float, status: Mapping[str, Any]) -> Sample:
        """From a status snapshot (front/status.py)."""
        return cls(
            at,
            {
                worker["id"]: SlotCounters(
                    worker["requests_total"],
                    worker["cpu_seconds"],
                    tuple(worker["latency_counts"]),
                )
                for worker in status["workers"]
            },
            status["front"]["cpu_seconds"],
            status["front"]["handed_total"],
            status["front"]["rehanded_total"],
        )


def quantile(bounds: Sequence[float], counts: Sequence[int], q: float) -> float | None:
    """The q-quantile of a histogram (counts per bucket, the last one above the final
    bound), interpolated linearly inside its bucket as Prometheus's
    histogram_quantile() does; None without observations. Above the last bound the
    answer is that bound (the histogram cannot say more)."""
    total = sum(counts)
    if total <= 0:
        return None
    rank = q * total
    cumulative = 0
    lower = 0.0
    for index, count in enumerate(counts):
        if index >= len(bounds):
            return bounds[-1]
        upper = bounds[index]
        if count > 0 and cumulative + count >= rank:
            return lower + (upper - lower) * (rank - cumulative) / count
        cumulative += count
        lower = upper
    return bounds[-1]


def jain_index(values: Iterable[float]) -> float | None:
    """Jain's fairness index, (sum x)^2 / (n * sum x^2): 1.0 when every worker got the
    same share, 1/n when one got everything. None when there is nothing to compare."""
    items = list(values)
    squares = sum(x * x for x in items)
    if len(items) < 1 or squares <= 0:
        return None
    return sum(items) ** 2 / (len(items) * squares)


def _delta(new: float, old: float) -> float:
    # A slot's counters only grow; a slot that was replaced by a new one with the same
    # id (scaled down, then up) may start lower: count from zero then.
    return new - old if new >= old else new


class History:
    """The last `capacity` samples, and the figures drawn from them; `bounds` are
    the latency histogram's bucket bounds (seconds)."""

    def __init__(self, bounds: Sequence[float], capacity: int = CAPACITY) -> None:
        self.bounds = tuple(bounds)
        self.samples: deque[Sample] = deque(maxlen=capacity)

    def record(self, sample: Sample) -> None:
        """Add the newest sample (the oldest drops out at capacity); ignored unless
        it is later than the last one."""
        if self.samples and sample.at <= self.samples[-1].at:
            return  # time must move on (two samples in one clock tick say nothing)
        self.samples.append(sample)

    def _reference(self, slot: int, seconds: float) -> SlotCounters | None:
        """The slot's counters `seconds` before the latest sample: from the newest sample
        at least that old, or, for a young slot, from the oldest sample that has it."""
        latest_at = self.samples[-1].at
        found = None
        for sample in reversed(self.samples):
            counters = sample.slots.get(slot)
            if counters is None:
                break  # the slot did not exist before this sample
            found = counters
            if latest_at - sample.at >= seconds:
                break
        return found

    def now(self) -> dict[str, Any]:
        """Rates over the last step, percentiles and fairness over their windows:
        {"workers": {slot: {...}}, "front": {...}, "fairness": {...}}."""
        out: dict[str, Any] = {"workers": {}, "front": {}, "fairness": {}}
        if len(self.samples) < 2:
            return out
        latest, previous = self.samples[-1], self.samples[-2]
        step = latest.at - previous.at
        shares: dict[int, float] = {}
        for slot, counters in latest.slots.items():
            figures: dict[str, Any] = {}
            before = previous.slots.get(slot)
            if before is not None:
                figures["requests_per_s"] = round(
                    _delta(counters.requests, before.requests) / step, 1
                )
                figures["cpu_percent"] = round(
                    100 * _delta(counters.cpu_seconds, before.cpu_seconds) / step, 1
                )
            window = self._reference(slot, PERCENTILE_WINDOW)
            if window is not None and len(window.latency_counts) == len(counters.latency_counts):
                counts = [
                    int(_delta(new, old))
                    for new, old in zip(counters.latency_counts, window.latency_counts, strict=True)
                ]
                for name, q in (("latency_p50_ms", 0.5), ("latency_p99_ms", 0.99)):
                    value = quantile(self.bounds, counts, q)
                    figures[name] = None if value is None else round(value * 1000, 3)
            first = self._reference(slot, FAIRNESS_WINDOW)
            if first is not None:
                shares[slot] = _delta(counters.requests, first.requests)
            out["workers"][slot] = figures
        out["front"] = {
            "cpu_percent": round(
                100 * _delta(latest.front_cpu_seconds, previous.front_cpu_seconds) / step, 1
            ),
            "handoffs_per_s": round(_delta(latest.handed_total, previous.handed_total) / step, 1),
            "rehanded_per_s": round(
                _delta(latest.rehanded_total, previous.rehanded_total) / step, 1
            ),
        }
        total = sum(shares.values())
        out["fairness"] = {
            "window_s": round(min(FAIRNESS_WINDOW, latest.at - self.samples[0].at), 1),
            "shares": {slot: (count / total if total else None) for slot, count in shares.items()},
            "jain_index": None if total == 0 else round(jain_index(shares.values()) or 0.0, 4),
        }
        return out

    def series(self) -> dict[str, Any]:
        """Per-step rates over the whole history, for sparklines: {"at": [seconds
        before the latest sample], "workers": {slot: [req/s or None]}, "handoffs_per_s":
        [...]}. None where a slot did not exist at both ends of a step."""
        samples = list(self.samples)
        if len(samples) < 2:
            return {"at": [], "workers": {}, "handoffs_per_s": []}
        latest = samples[-1]
        slots = sorted(latest.slots)
        workers: dict[int, list[float | None]] = {slot: [] for slot in slots}
        handoffs: list[float] = []
        at: list[float] = []
        for before, after in pairwise(samples):
            step = after.at - before.at
            at.append(round(after.at - latest.at, 1))
            handoffs.append(round(_delta(after.handed_total, before.handed_total) / step, 1))
            for slot in slots:
                old, new = before.slots.get(slot), after.slots.get(slot)
                workers[slot].append(
                    None
                    if old is None or new is None
                    else round(_delta(new.requests, old.requests) / step, 1)
                )
        return {"at": at, "workers": workers, "handoffs_per_s": handoffs}
