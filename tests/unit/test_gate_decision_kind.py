"""The decision policy's gate adapter: evidence read from joined decisions, off-policy comparisons, faults."""

import json

import numpy as np
import pytest

from core.config.decisions import DecisionExploreSection, DecisionModelSection
from core.config.gate import OPESection
from core.decisions.files import policy_files
from core.decisions.policy import DecisionPolicy
from core.decisions.simulate import INTERACTIONS, rounds
from gate.kinds import kind_for
from gate.pointer import GateError


def _policy(trained_on: int = 0) -> DecisionPolicy:
    pol = DecisionPolicy(DecisionModelSection(bits=14, interactions=INTERACTIONS),
                         DecisionExploreSection(kind="epsilon", epsilon=0.2))
    rng = np.random.default_rng(5)
    for r in rounds("image_segments", trained_on, seed=5):
        req = pol.request(r.context, r.actions)
        k = int(rng.integers(len(r.actions)))
        pol.learn(req, k, r.reward(r.actions[k]["id"]), 1 / len(r.actions))
    return pol


def _item(r, chosen: int, propensity: float, reward: float, version: int = 1, slice_=None) -> dict:
    row = {"context": json.dumps(r.context), "actions": json.dumps(r.actions), "chosen": chosen,
           "propensity": propensity, "reward": reward, "policy_version": version}
    return {"type": "feedback", "row": row, "client": None, "slice": slice_}


def test_a_held_back_decision_is_logged_evidence_and_its_reward_is_scaled():
    kind = kind_for("decision_policy", reward_range=[-1, 1])
    r = next(rounds("led", 1))
    ev = kind.read(_item(r, 3, 0.25, 0.5, version=4, slice_="ope"))
    assert ev.version == 4 and ev.score == pytest.approx(0.75) and ev.logged.chosen == 3
    assert kind.read(_item(r, 3, 0.25, 5.0)).score == 1.0 and kind.read(_item(r, 3, 0.25, 5.0)).logged is None
    assert kind.read({"type": "answered"}) is None
    with pytest.raises(GateError):
        kind_for("decision_policy", reward_range=[1, 1])


def test_off_policy_tells_a_trained_candidate_from_an_untrained_live_policy_on_live_s_own_decisions():
    kind = kind_for("decision_policy", reward_range=[0, 1])
    live, candidate = _policy(0), _policy(3000)
    rng, logged, earned = np.random.default_rng(0), [], []
    for r in rounds("image_segments", 1500, seed=9):
        d = live.decide(live.request(r.context, r.actions), rng)
        logged.append(kind.read(_item(r, d.chosen, d.propensity, r.reward(d.action), slice_="ope")).logged)
        earned.append(r.reward(candidate.decide(candidate.request(r.context, r.actions), rng).action))
    c, l, d, said = kind.off_policy(candidate, lambda: live, logged, OPESection(), seed=0)
    assert d.low > 0.3 and "off-policy" in said, said
    assert abs(c.value - np.mean(earned)) < 0.08  # the estimate is of what it would earn as served
    assert abs(l.value - np.mean([x.reward for x in logged])) < 0.05


def test_a_version_round_trips_and_a_non_finite_weight_is_a_fault():
    kind = kind_for("decision_policy", reward_range=[0, 1])
    pol = _policy(200)
    weights, files = policy_files(pol)
    loaded = kind.load(weights, files)
    r = next(rounds("image_segments", 1, seed=2))
    assert kind.fault(loaded) is None
    assert kind.answer(loaded, [(r.context, r.actions)]).tolist() == kind.answer(pol, [(r.context, r.actions)]).tolist()
    loaded.scorer.weights[3] = np.nan
    assert "not finite" in kind.fault(loaded)
