"""The gate's slices take rows from the joiner's thread while a candidate is scored: both models
must be scored on the same rows (a stationary run with `adapt` on once failed exactly there)."""

import numpy as np

from core.config.gate import GateSection, OPESection
from gate.evidence import Evidence
from gate.kinds.text import TextKind, correct
from gate.recent import RecentSlice
from gate.stages.ope import OffPolicy


class Growing:
    """A model whose every forward lets the joiner add rows to the slice meanwhile."""

    def __init__(self, feed):
        self.feed = feed

    def predict_proba(self, texts, batch: int = 128):
        self.feed()
        return np.tile([[0.3, 0.7]], (len(texts), 1))


def test_recent_slice_scores_both_sides_on_one_snapshot():
    recent = RecentSlice(size=500, min_rows=10, score=correct)
    recent.add([(f"t{i}", i % 2) for i in range(20)])
    model = Growing(lambda: recent.add([("new", 1)] * 3))
    result = recent.compare(model, model, GateSection())
    assert result.n == 20 and result.diff == 0.0
    again = recent.compare(model, model, GateSection())  # the slice grew meanwhile: one snapshot again
    assert again.n == 26 and again.diff == 0.0


class Policy:
    """What the `ope` stage asks of its policy: the kind, live, the shared statistics, stored models."""

    def __init__(self, model):
        self.kind, self.live_version, self.seed = TextKind([("t", 0)]), 1, 0
        self.settings, self.model = GateSection(stages=["ope"]), lambda version: model


def test_ope_slice_scores_both_sides_on_one_snapshot():
    from gate.stage import Candidate

    rows = [{"type": "feedback", "slice": "ope", "row": {"text": f"t{i}", "prediction": 1, "propensity": 0.7,
                                                          "label": None, "reward": float(i % 2)}} for i in range(20)]
    kind = TextKind([("t", 0)])
    evidence = [kind.read(r) for r in rows]
    model = Growing(lambda: ope.feed(evidence[:3]))
    ope = OffPolicy(Policy(model), OPESection(min_rows=10, bootstrap_samples=50))
    assert ope.feed(evidence) == 20 and isinstance(evidence[0], Evidence)
    verdict = ope.judge(Candidate("p", {}, {}, {}, model, live=1))
    assert verdict.evidence["n"] == 20 and verdict.evidence["diff"] == 0.0
