"""benchmarks/_generate_eval.py: reading reward curves at equal completions."""

from __future__ import annotations

import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[2] / "benchmarks"))

from _generate_eval import value_at, window_mean  # noqa: E402

CURVE = [(32, 0.2), (64, 0.4), (96, None), (128, 0.8)]


def test_value_at_takes_the_last_point_at_or_before():
    assert value_at(CURVE, 10) is None
    assert value_at(CURVE, 32) == 0.2
    assert value_at(CURVE, 100) == 0.4  # a point without a value keeps the one before it
    assert value_at(CURVE, 10_000) == 0.8


def test_window_mean_weights_each_point_by_its_completions():
    assert window_mean(CURVE, 0, 64) == (32 * 0.2 + 32 * 0.4) / 64
    uneven = [(10, 1.0), (40, 0.0)]  # 10 completions at 1.0, then 30 at 0.0
    assert window_mean(uneven, 0, 40) == 10 / 40
    assert window_mean(CURVE, 64, 128) == 0.8  # (lo, hi]: 64 is out, 96 has no value
    assert window_mean(CURVE, 200, 300) is None
