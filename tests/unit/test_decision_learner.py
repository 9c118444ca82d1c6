"""The decision learner without a cluster: joined rows in, a policy that serves better out, bad rows skipped."""

import json

import numpy as np

from core.config.decisions import DecisionExploreSection, DecisionModelSection
from core.decisions.files import policy_from_files
from core.decisions.simulate import INTERACTIONS, rounds
from learners.decisions import DecisionLearnConfig, DecisionObjective, DecisionRows
from learners.objective import WorkerContext


def _logged(n: int, seed: int = 0) -> list[dict]:
    """Rows as the decision app stores them, logged by serving uniformly at random."""
    rng, out = np.random.default_rng(seed), []
    for r in rounds("image_segments", n, seed):
        k = int(rng.integers(len(r.actions)))
        out.append({"context": json.dumps(r.context), "actions": json.dumps(r.actions), "chosen": k,
                    "propensity": 1 / len(r.actions), "reward": r.reward(r.actions[k]["id"])})
    return out


def _objective() -> DecisionObjective:
    obj = DecisionObjective()
    obj.setup(DecisionLearnConfig(DecisionModelSection(bits=16, interactions=INTERACTIONS),
                                  DecisionExploreSection(kind="epsilon", epsilon=0.0)), WorkerContext())
    return obj


def test_learning_from_uniformly_logged_rows_gives_a_policy_that_beats_serving_at_random():
    obj, rows = _objective(), _logged(4000)
    for i in range(0, len(rows), 50):
        metrics = obj.step(DecisionRows(rows[i:i + 50]))
        assert metrics["rows"] == len(rows[i:i + 50]) and metrics["skipped"] == 0
    exported = obj.export_policy()
    policy = policy_from_files({k: v.numpy() for k, v in exported.weights.items()}, exported.files)
    rng = np.random.default_rng(1)
    earned = [r.reward(policy.decide(policy.request(r.context, r.actions), rng).action)
              for r in rounds("image_segments", 1000, seed=7)]
    assert np.mean(earned) > 0.5  # a seventh at random
    assert exported.info["updates"] == 4000 and exported.metrics["rows_learned"] == 4000


def test_a_row_that_no_longer_parses_is_skipped_and_counted_and_state_round_trips():
    obj, rows = _objective(), _logged(20)
    bad = [dict(rows[0], context="{not json"), dict(rows[1], chosen=99),
           dict(rows[2], actions=json.dumps([{"id": "a"}, {"id": "a"}]))]
    metrics = obj.step(DecisionRows(bad + rows[3:]))
    assert metrics == {"rows": 17, "skipped": 3, "loss": metrics["loss"], "mean_reward": metrics["mean_reward"]}
    assert obj.step(None) == {"rows": 0, "skipped": 0}
    again = _objective()
    again.load_state_dict(obj.state_dict())
    assert np.array_equal(again.policy.scorer.weights, obj.policy.scorer.weights) and again.steps == obj.steps
