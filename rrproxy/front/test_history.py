from __future__ import annotations

import math

import pytest

from ..ipc.messages import LATENCY_BUCKETS
from .history import History, Sample, SlotCounters, jain_index, quantile

BOUNDS = (0.001, 0.01, 0.1)


def test_quantile_interpolates_inside_the_bucket_like_prometheus() -> None:
    # 10 observations in (0.001, 0.01]: the median is halfway through that bucket.
    assert quantile(BOUNDS, [0, 10, 0, 0], 0.5) == pytest.approx(0.0055)
    # 99 fast, 1 slow: p50 in the first bucket, p99 the top of the first bucket
    # (rank 99 is the last fast one), p999 in the slow one.
    counts = [99, 0, 1, 0]
    assert quantile(BOUNDS, counts, 0.5) == pytest.approx(0.001 * 50 / 99)
    assert quantile(BOUNDS, counts, 0.99) == pytest.approx(0.001)
    p999 = quantile(BOUNDS, counts, 0.999)
    assert p999 is not None and 0.01 < p999 <= 0.1


def test_quantile_edges() -> None:
    assert quantile(BOUNDS, [0, 0, 0, 0], 0.5) is None
    # Everything above the last bound: the last bound is all a histogram can say.
    assert quantile(BOUNDS, [0, 0, 0, 5], 0.99) == 0.1


def test_sub_millisecond_requests_are_resolved() -> None:
    # What a hello-world handler does: 200 us. With Prometheus's default buckets
    # (first bound 5 ms) the p50 would read 2.5 ms.
    counts = [0] * (len(LATENCY_BUCKETS) + 1)
    counts[LATENCY_BUCKETS.index(0.00025)] = 1000
    p50 = quantile(LATENCY_BUCKETS, counts, 0.5)
    assert p50 is not None and 0.0001 < p50 <= 0.00025


def test_jain_index() -> None:
    assert jain_index([10, 10, 10, 10]) == pytest.approx(1.0)
    assert jain_index([40, 0, 0, 0]) == pytest.approx(0.25)
    assert jain_index([30, 10]) == pytest.approx(40**2 / (2 * (900 + 100)))
    assert jain_index([]) is None
    assert jain_index([0, 0]) is None


def _sample(at: float, requests: dict[int, int], cpu: float = 0.0, handed: int = 0) -> Sample:
    slots = {slot: SlotCounters(count, cpu, (count, 0, 0, 0)) for slot, count in requests.items()}
    return Sample(at, slots, front_cpu_seconds=cpu, handed_total=handed, rehanded_total=0)


def test_rates_percentiles_and_fairness_from_samples() -> None:
    history = History(BOUNDS)
    assert history.now() == {"workers": {}, "front": {}, "fairness": {}}
    history.record(_sample(0.0, {1: 0, 2: 0}, cpu=0.0, handed=0))
    history.record(_sample(2.0, {1: 300, 2: 100}, cpu=1.0, handed=400))
    now = history.now()
    assert now["workers"][1]["requests_per_s"] == 150.0
    assert now["workers"][2]["requests_per_s"] == 50.0
    assert now["workers"][1]["cpu_percent"] == 50.0
    assert now["front"] == {"cpu_percent": 50.0, "handoffs_per_s": 200.0, "rehanded_per_s": 0.0}
    # All of slot 1's recent requests were in the first bucket (<= 1 ms).
    assert 0 < now["workers"][1]["latency_p99_ms"] <= 1.0
    fairness = now["fairness"]
    assert fairness["shares"] == {1: 0.75, 2: 0.25}
    assert fairness["jain_index"] == pytest.approx(400**2 / (2 * (300**2 + 100**2)), abs=1e-4)


def test_a_slot_that_starts_over_counts_from_zero_and_time_must_advance() -> None:
    history = History(BOUNDS)
    history.record(_sample(0.0, {1: 500}))
    history.record(_sample(0.0, {1: 999}))  # same instant: ignored
    history.record(_sample(1.0, {1: 20}))  # a new slot 1 (scaled down and up again)
    assert history.now()["workers"][1]["requests_per_s"] == 20.0


def test_percentiles_cover_only_the_recent_window() -> None:
    history = History(BOUNDS)
    slow = SlotCounters(0, 0.0, (0, 0, 1000, 0))
    history.record(Sample(0.0, {1: slow}, 0.0, 0, 0))
    # 30 s later, only fast requests were added: the slow ones are out of the window.
    for second in range(1, 31):
        counters = SlotCounters(second * 10, 0.0, (second * 10, 0, 1000, 0))
        history.record(Sample(float(second), {1: counters}, 0.0, 0, 0))
    assert history.now()["workers"][1]["latency_p99_ms"] <= 1.0


def test_series_for_sparklines() -> None:
    history = History(BOUNDS, capacity=4)
    for second in range(6):
        history.record(_sample(float(second), {1: second * 10, 2: second * 5}, handed=second))
    series = history.series()
    # Four samples kept, so three steps.
    assert series["at"] == [-2.0, -1.0, 0.0]
    assert series["workers"] == {1: [10.0, 10.0, 10.0], 2: [5.0, 5.0, 5.0]}
    assert series["handoffs_per_s"] == [1.0, 1.0, 1.0]
    history.record(_sample(6.0, {1: 60, 3: 1}))
    series = history.series()
    assert series["workers"][3] == [None, None, None]  # slot 3 is new: no rate yet
    assert not any(math.isnan(x) for x in series["handoffs_per_s"])


def test_a_slot_younger_than_the_window_is_measured_from_its_first_sample() -> None:
    history = History(BOUNDS)
    history.record(Sample(0.0, {}, 0.0, 0, 0))  # before any worker slot existed
    history.record(_sample(1.0, {1: 0, 2: 0}))
    history.record(_sample(2.0, {1: 30, 2: 10}))
    now = history.now()
    assert now["fairness"]["shares"] == {1: 0.75, 2: 0.25}
    assert now["workers"][1]["latency_p50_ms"] is not None
    assert now["fairness"]["window_s"] == 2.0
