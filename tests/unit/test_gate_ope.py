"""The gate's off-policy stage: candidates judged on held-back live feedback logged with exploration."""

from __future__ import annotations

import numpy as np
import pytest

from core.exploration import ExplorationSection, choose, serving_distribution
from core.feedback_config import GateSection, OPESection
from core.labeled_data import sentiment_reviews
from core.registry import PolicyRegistry
from core.text_classifier import from_version
from serving.gate import PublishGate
from tests.unit.test_gate import P, FakePublisher, _start, world  # noqa: F401 (world: a fixture)


def _logged_rows(world, n: int, p_label: float, seed: int = 0) -> list[dict]:
    """Traffic the live model answered with epsilon 0.3 exploration: what the joiner hands the gate."""
    rows = sentiment_reviews()
    rng = np.random.default_rng(seed)
    pick = rng.permutation(len(rows))[-n:]  # away from the fixture's 500 train / held-out rows
    texts, labels = [rows[i][0] for i in pick], np.array([rows[i][1] for i in pick])
    live = from_version(world["base"], world["files"])
    dist = serving_distribution(live.predict_proba(texts), ExplorationSection(kind="epsilon", epsilon=0.3))
    actions, mu = choose(dist, rng)
    out = []
    for t, a, m, y in zip(texts, actions, mu, labels):
        labeled = rng.random() < p_label
        out.append({"text": t, "prediction": int(a), "propensity": float(m),
                    "label": int(y) if labeled else None, "reward": None if labeled else float(a == y)})
    return out


def _gate(tmp_path, world, stages, events):
    registry = PolicyRegistry(tmp_path / "registry")
    cfg = GateSection(stages=stages, ope=OPESection(min_rows=300, bootstrap_samples=200))
    gate = PublishGate(registry, world["heldout"], cfg, publisher=FakePublisher(registry),
                       emit=lambda kind, **fields: events.append((kind, fields)))
    _start(gate, world)
    return gate, registry


@pytest.mark.parametrize("p_label", [0.0, 0.3])
def test_ope_stage_refuses_the_poisoned_candidate_and_promotes_an_equal_one(tmp_path, world, p_label):
    events: list = []
    gate, registry = _gate(tmp_path, world, ["ope"], events)
    early = gate.submit(P, world["base"], world["files"], {})
    assert early["decision"] == "refuse" and "not enough off-policy evidence" in early["reason"]
    assert gate.offpolicy(P, _logged_rows(world, 700, p_label)) == 700
    bad = gate.submit(P, world["poisoned"], world["files"], {})
    assert bad["decision"] == "refuse" and "worse than live" in bad["reason"], bad["reason"]
    ope = registry.get(P, bad["version"]).gate["stages"][-1]
    assert ope["stage"] == "ope" and ope["diff_ci"][1] < -0.01 and ope["n"] == 700
    assert ope["labeled"] == sum(r["label"] is not None for r in _logged_rows(world, 700, p_label))
    same = gate.submit(P, world["base"], world["files"], {})
    assert same["decision"] == "promote", same["reason"]
    assert registry.latest(P, "live").version == same["version"]
    assert [e["stages"][0]["stage"] for k, e in events if k == "gate_decision" and e["decision"] != "initial"] \
        == ["ope"] * 3


def test_stages_run_in_order_and_each_leaves_its_verdict(tmp_path, world):
    events: list = []
    gate, registry = _gate(tmp_path, world, ["heldout", "ope"], events)
    gate.offpolicy(P, _logged_rows(world, 400, 0.0))
    bad = gate.submit(P, world["poisoned"], world["files"], {})
    assert [s["stage"] for s in registry.get(P, bad["version"]).gate["stages"]] == ["heldout"]  # refused first
    good = gate.submit(P, world["better"], world["files"], {})
    stages = registry.get(P, good["version"]).gate["stages"]
    assert good["decision"] == "promote" and [s["stage"] for s in stages] == ["heldout", "ope"]
    assert all(s["decision"] == "promote" for s in stages)


def test_rows_without_a_propensity_are_not_evidence(tmp_path, world):
    gate, _ = _gate(tmp_path, world, ["ope"], [])
    assert gate.offpolicy(P, [{"text": "x", "prediction": 0, "propensity": None, "label": 1, "reward": None},
                              {"text": "y", "prediction": 0, "propensity": 0.5, "label": None, "reward": None}]) == 0
