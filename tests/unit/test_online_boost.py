"""The online learner follows the gate's learner_boost decisions (learners/online_boost.py), without Ray."""

from __future__ import annotations

from types import SimpleNamespace

import pytest

from tests.unit.test_online_learner import FakeGate, _labeled, _objective, encoder_files, reviews  # noqa: F401


class AdaptiveGate(FakeGate):
    """A gate that has decided one adaptation: `adaptation.remote` answers it (no Ray)."""

    def __init__(self, decision):
        super().__init__()
        self.asked = 0

        def answer(policy_id):
            self.asked += 1
            return decision

        self.adaptation = SimpleNamespace(remote=answer)


def test_an_adaptation_boosts_lr_rehearsal_and_candidates_for_its_updates_then_ends(encoder_files, reviews):
    boost = {"action": "learner_boost", "updates": 25, "lr_factor": 3.0, "rehearsal": 0.1, "candidate_every": 5}
    gate = AdaptiveGate({"id": 1, "actions": [boost, {"action": "hold_rollback", "events": 100}]})
    obj = _objective(encoder_files, gate=gate, candidate_every=1000, rehearsal=0.5)
    base_lr = obj.optimizer.param_groups[0]["lr"]
    for i in range(40):  # the learner asks every ADAPT_POLL_EVERY updates and applies the answer next time
        start = (16 * i) % 280
        obj.step(_labeled(reviews[start:start + 16]))
        if obj.boost.adapted:
            break
    assert obj.boost.adapted == 1 and gate.asked >= 1
    assert obj.optimizer.param_groups[0]["lr"] == pytest.approx(3 * base_lr)
    assert (obj.boost.rehearsal, obj.boost.candidate_every, obj.boost.left) == (0.1, 5, 25)
    metrics = obj.step(_labeled(reviews[:16]))
    assert metrics["boost_left"] == 24 and metrics["lr"] == pytest.approx(3 * base_lr)
    for _ in range(30):
        obj.step(_labeled(reviews[16:32]))
    assert obj.boost.left == 0 and obj.optimizer.param_groups[0]["lr"] == pytest.approx(base_lr)
    assert (obj.boost.rehearsal, obj.boost.candidate_every) == (0.5, 1000)
    assert len(gate.calls) >= 5  # candidates every 5 updates while boosted; none at every 1000
    assert obj.boost.adapted == 1  # the same decision is applied once
