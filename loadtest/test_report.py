from __future__ import annotations

import pytest

from .report import jain, max_over_mean
from .scenarios import SCENARIOS


def test_jain_index_bounds():
    assert jain([10, 10, 10, 10]) == pytest.approx(1.0)
    assert jain([40, 0, 0, 0]) == pytest.approx(0.25)  # 1/n: one takes all
    assert jain([70, 10, 10, 10]) == pytest.approx(10000 / (4 * 5200))
    assert jain([]) == 1.0


def test_max_over_mean():
    assert max_over_mean([5, 5]) == 1.0
    assert max_over_mean([9, 1]) == pytest.approx(1.8)


def test_mixed_scenario_sends_about_one_in_twenty_to_slow():
    import random

    rng = random.Random(7)
    paths = [SCENARIOS["mixed"].next_path(rng) for _ in range(20000)]
    assert 0.04 < paths.count("/slow") / len(paths) < 0.06
    assert SCENARIOS["hello"].next_path(rng) == "/"
