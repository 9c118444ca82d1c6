"""The gate's slices take rows from the joiner's thread while a candidate is scored: both models
must be scored on the same rows (a stationary run with `adapt` on once failed exactly there)."""

import numpy as np

from core.config.feedback import GateSection
from serving.ope_slice import OPESlice
from serving.recent_slice import RecentSlice


class Growing:
    """A model whose every forward lets the joiner add rows to the slice meanwhile."""

    def __init__(self, feed):
        self.feed = feed

    def predict_proba(self, texts, batch: int = 128):
        self.feed()
        return np.tile([[0.3, 0.7]], (len(texts), 1))


def test_recent_slice_scores_both_sides_on_one_snapshot():
    recent = RecentSlice(size=500, min_rows=10)
    recent.add([(f"t{i}", i % 2) for i in range(20)])
    model = Growing(lambda: recent.add([("new", 1)] * 3))
    result = recent.compare(model, model, GateSection())
    assert result.n == 20 and result.diff == 0.0
    better, t, l = recent.better(model, model)  # the slice grew meanwhile: scored on one snapshot again
    assert not better and t == l


def test_ope_slice_scores_both_sides_on_one_snapshot():
    ope = OPESlice(size=500, min_rows=10)
    rows = [{"text": f"t{i}", "prediction": 1, "propensity": 0.7, "label": None, "reward": float(i % 2)}
            for i in range(20)]
    ope.add(rows)
    model = Growing(lambda: ope.add(rows[:3]))
    cfg = GateSection(stages=["ope"])
    cfg.ope.min_rows, cfg.ope.bootstrap_samples = 10, 50
    verdict = ope.judge(model, model, cfg)
    assert verdict.evidence["n"] == 20 and verdict.evidence["diff"] == 0.0
