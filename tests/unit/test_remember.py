"""Rehearsal that remembers, end to end without Ray: the gate's controller hears a refusal streak
during a drift and raises the memory level; the learner follows it, rehearses from the balanced
buffer and distills to the live version."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from learners.distill import distill_loss
from learners.rehearsal import BalancedMemory
from tests.unit.test_gate import P, _adaptive_gate, _start, scores, world  # noqa: F401
from tests.unit.test_online_boost import AdaptiveGate
from tests.unit.test_online_learner import _labeled, _objective, encoder_files, reviews  # noqa: F401


def test_a_refusal_streak_during_a_drift_raises_the_learners_memory(tmp_path, world):
    gate, registry, events = _adaptive_gate(tmp_path, world, refusals={"streak": 3})
    _start(gate, world)
    for _ in range(3):  # refusals before any drift: the gate doing its work, no escalation
        assert gate.submit(P, world["poisoned"], world["files"], {})["decision"] == "refuse"
    assert not [f for k, f in events if k == "adapt"]
    rng = np.random.default_rng(0)
    gate.evidence(P, scores(1, rng.random(600) < 0.9))
    assert gate.evidence(P, scores(1, rng.random(600) < 0.6))["adapt"]  # the drift alarm acts
    for _ in range(3):
        assert gate.submit(P, world["poisoned"], world["files"], {})["decision"] == "refuse"
    raised = [f for k, f in events if k == "adapt" and f["signal"] == "refusals"]
    assert len(raised) == 1 and raised[0]["action"] == ["remember"] and raised[0]["at"] == 3
    latest = gate.adaptation(P)
    assert latest["actions"] == [{"action": "remember", "level": 1}] and latest["memory_level"] == 1
    # the open alarm the guard names is still the drift alarm, not the escalation
    held = gate.policy(P).adaptation.open_alarm()
    assert held is not None and held["signal"] == "correctness"


def test_the_learner_follows_the_memory_level(encoder_files, reviews):
    decision = {"id": 1, "actions": [{"action": "remember", "level": 2}], "memory_level": 2}
    gate = AdaptiveGate(decision)
    obj = _objective(encoder_files, gate=gate, candidate_every=1000, rehearsal=0.4,
                     memory={"distill": 0.5})
    obj.fb.adapt.refusals.rehearsal_step, obj.fb.adapt.refusals.distill_step = 0.1, 0.5
    assert (obj.boost.rehearsal, obj.boost.distill) == (0.4, 0.5)
    for i in range(25):
        metrics = obj.step(_labeled(reviews[(16 * i) % 280:(16 * i) % 280 + 16]))
    assert obj.boost.level == 2 and metrics["memory_level"] == 2
    assert obj.boost.rehearsal == pytest.approx(0.6) and obj.boost.distill == pytest.approx(1.5)
    assert metrics["rehearsal_rows"] > 0 and np.isfinite(metrics["distill_loss"])


def _kl_to_reference(obj, rows) -> float:
    ids, mask, types = obj.bundle.encode([t for t, _ in rows])
    obj.model.eval()
    with torch.no_grad():
        return float(distill_loss(obj.model(ids, mask, types), obj.reference.logits(ids, mask, types), 1.0))


@pytest.mark.parametrize("balanced", [False, True])
def test_distillation_keeps_the_candidate_near_live_on_the_rows_it_rehearses(encoder_files, reviews, balanced):
    """Old rows first, then new rows with their labels flipped (a changed world): with the
    distillation term the model moves less from the live version on the old rows."""
    old, new = reviews[:64] + reviews[150:214], reviews[64:150] + reviews[214:300]
    flipped = [(t, 1 - y) for t, y in new]
    kl = {}
    for weight in (0.0, 5.0):
        kw = {"memory": {"distill": weight, "buffer": "balanced" if balanced else "uniform", "era_rows": 64}}
        groups = {t: "old" for t, _ in old} | {t: "new" for t, _ in new} if balanced else None
        obj = _objective(encoder_files, rehearsal=0.5, setup_kw={"groups": groups}, **kw)
        if weight == 0:  # the reference exists only where it may be used: build it for the measure
            from learners.distill import LiveReference

            obj.reference = LiveReference(obj.model, obj.ctx)
        assert isinstance(obj.reservoir, BalancedMemory) == balanced
        for i in range(0, len(old), 16):
            obj.step(_labeled(old[i:i + 16]))
        for i in range(30):
            j = (16 * i) % (len(flipped) - 16)
            obj.step(_labeled(flipped[j:j + 16]))
        kl[weight] = _kl_to_reference(obj, old)
    assert kl[5.0] < 0.7 * kl[0.0], kl


def test_the_loop_says_what_a_raised_memory_changed():
    from types import SimpleNamespace

    from cluster.loops.feedback import FeedbackLoop
    from core.config.feedback import FeedbackSection

    lines: list[str] = []
    fb = FeedbackSection(learning={"rehearsal": 0.5, "memory": {"distill": 0.5}})
    loop = SimpleNamespace(name="sentiment", fb=fb, ctx=SimpleNamespace(say=lines.append))
    FeedbackLoop._say_remember(loop, {"signal": "refusals", "at": 3, "actions": [{"action": "remember", "level": 2}]})
    FeedbackLoop._say_remember(loop, {"signal": "correctness", "actions": [{"action": "learner_boost"}]})
    assert lines == ["evolve: sentiment: 3 candidates refused in a row during a drift: rehearsal 0.60 -> 0.70, "
                     "distillation 1.00 -> 1.50 (level 2)"]
