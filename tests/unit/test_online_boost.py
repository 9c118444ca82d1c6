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


def test_a_boost_with_domain_mlm_trains_the_encoder_on_the_rows_texts_then_stops(encoder_files, reviews):
    import math

    import torch

    boost = {"action": "learner_boost", "updates": 20, "lr_factor": 1.0, "rehearsal": 0.1, "candidate_every": 1000,
             "domain_mlm": 1.0}
    gate = AdaptiveGate({"id": 1, "actions": [boost]})
    obj = _objective(encoder_files, gate=gate, candidate_every=1000, rehearsal=0.5)
    for i in range(40):  # the learner asks every ADAPT_POLL_EVERY updates and applies the answer next time
        start = (16 * i) % 280
        metrics = obj.step(_labeled(reviews[start:start + 16]))
        assert math.isnan(metrics["mlm_loss"]) or obj.boost.domain_mlm  # no MLM before the boost
        if obj.boost.adapted:
            break
    head_before = obj.model.head.weight.detach().clone()
    embeddings = obj.model.bert.embeddings.word_embeddings.weight
    assert obj.domain_mlm is None  # built at the first boosted update
    texts = reviews[:16]
    losses = [obj.step(_labeled(texts))["mlm_loss"] for _ in range(15)]  # the same texts: MLM loss falls
    assert obj.domain_mlm is not None and obj.domain_mlm.head.predictions.decoder.weight is embeddings  # tied
    assert all(math.isfinite(x) for x in losses) and min(losses[-5:]) < losses[0], losses
    assert not torch.equal(head_before, obj.model.head.weight)  # the classifier keeps learning too
    for _ in range(10):
        obj.step(_labeled(texts))
    assert obj.boost.left == 0 and obj.boost.domain_mlm == 0.0  # the boost ended, and with it the MLM term
    assert "cls." not in " ".join(obj.export_policy().weights)  # a served version is the classifier alone
