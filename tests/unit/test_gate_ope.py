"""The gate's off-policy stage: candidates judged on held-back live feedback logged with exploration."""

from __future__ import annotations

import numpy as np
import pytest

from core.stats.exploration import ExplorationSection, choose, serving_distribution
from core.config.gate import GateSection, OPESection
from core.data.labeled import sentiment_reviews
from core.storage.registry import PolicyRegistry
from core.models.classifier import from_version
from gate import Gate
from gate.kinds.text import TextKind
from tests.unit.test_gate import P, FakePublisher, _start, text_gate, world  # noqa: F401 (world: a fixture)


def _held_back(rows: list[dict]) -> list[dict]:
    """Joined feedback the joiner held out for the off-policy stage (the gate's `Slices` said `ope`)."""
    return [{"type": "feedback", "row": {"policy_version": 1, **r}, "slice": "ope"} for r in rows]


def _logged_rows(world, n: int, p_label: float, seed: int = 0) -> list[dict]:
    """Traffic the live model answered with epsilon 0.3 exploration: the rows the joiner hands the gate."""
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
    gate = text_gate(registry, world["heldout"], cfg, publisher=FakePublisher(registry),
                     emit=lambda kind, **fields: events.append((kind, fields)))
    _start(gate, world)
    return gate, registry


@pytest.mark.parametrize("p_label", [0.0, 0.3])
def test_ope_stage_refuses_the_poisoned_candidate_and_promotes_an_equal_one(tmp_path, world, p_label):
    events: list = []
    gate, registry = _gate(tmp_path, world, ["ope"], events)
    early = gate.submit(P, world["base"], world["files"], {})
    assert early["decision"] == "refuse" and "not enough off-policy evidence" in early["reason"]
    assert gate.evidence(P, _held_back(_logged_rows(world, 700, p_label)))["taken"]["ope"] == 700
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
    gate.evidence(P, _held_back(_logged_rows(world, 400, 0.0)))
    bad = gate.submit(P, world["poisoned"], world["files"], {})
    assert [s["stage"] for s in registry.get(P, bad["version"]).gate["stages"]] == ["heldout"]  # refused first
    good = gate.submit(P, world["base"], world["files"], {})  # "better" on the held-out set, not on this traffic
    stages = registry.get(P, good["version"]).gate["stages"]
    assert good["decision"] == "promote" and [s["stage"] for s in stages] == ["heldout", "ope"], good["reason"]
    assert all(s["decision"] == "promote" for s in stages)


def test_rows_without_a_propensity_are_not_evidence(tmp_path, world):
    gate, _ = _gate(tmp_path, world, ["ope"], [])
    rows = [{"text": "x", "prediction": 0, "propensity": None, "label": 1, "reward": None},
            {"text": "y", "prediction": 0, "propensity": 0.5, "label": None, "reward": None}]
    assert gate.evidence(P, _held_back(rows))["taken"]["ope"] == 0


class _Fixed:
    """A model whose answers are given: its probabilities put 0.9 on `answers` (the text's index)."""

    def __init__(self, answers):
        self.answers = np.asarray(answers)

    def predict_proba(self, texts, batch: int = 128):
        p = np.full((len(texts), 2), 0.1)
        p[np.arange(len(texts)), self.answers[[int(t) for t in texts]]] = 0.9
        return p


class _FixedKind(TextKind):
    """The text kind, its models given: a version's weights are its answers."""

    def load(self, weights, files):
        return _Fixed(weights["answers"])


def test_a_candidate_observed_worse_than_the_tolerance_is_refused_though_its_interval_is_wide(tmp_path):
    rng = np.random.default_rng(0)
    n = 400
    labels = rng.integers(0, 2, n)
    live = np.where(rng.random(n) < 0.85, labels, 1 - labels)
    cand = live.copy()
    cand[np.flatnonzero(live == labels)[:7]] ^= 1  # 1.75 points worse on these rows
    registry = PolicyRegistry(tmp_path / "registry")
    cfg = GateSection(stages=["ope"], tolerance=0.01, ope=OPESection(size=n, min_rows=100, bootstrap_samples=200))
    gate = Gate(registry, _FixedKind([("0", 0)]), cfg, publisher=FakePublisher(registry))
    gate.bootstrap(P, weights={"answers": live}, files={})
    served = np.where(rng.random(n) < 0.8, live, 1 - live)  # epsilon-like logging, rewards only
    gate.evidence(P, _held_back([{"text": str(i), "prediction": int(a), "propensity": 0.8 if a == live[i] else 0.2,
                                  "label": None, "reward": float(a == labels[i])} for i, a in enumerate(served)]))
    d = gate.submit(P, {"answers": cand}, {}, {})
    (verdict,) = [s for s in d["gate"]["stages"] if s["stage"] == "ope"]
    ev = verdict
    assert ev["diff"] < -0.01 and ev["diff_ci"][1] >= -0.01, ev  # the interval alone would promote
    assert verdict["decision"] == d["decision"] == "refuse" and "observed worse" in verdict["reason"]
