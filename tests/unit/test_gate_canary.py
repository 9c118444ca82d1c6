"""The gate's canary stage without Ray: a candidate on a share of traffic, decided by the sequential test."""

from __future__ import annotations

import numpy as np

from core.config.gate import CanarySection, GateSection
from core.storage.registry import PolicyRegistry
from tests.unit.test_gate import P, FakePublisher, _start, feedback, text_gate, world  # noqa: F401 (world: a fixture)


def _feed(gate, rng, live: int, p_live: float, cand: int, p_cand: float, n: int, share: float = 0.2) -> None:
    """n joined feedbacks (a reward each) in pushes of 10, as the joiner sends them."""
    for _ in range(n // 10):
        items = []
        for _ in range(10):
            v, p = (cand, p_cand) if rng.random() < share else (live, p_live)
            items.append(feedback(v, reward=float(rng.random() < p)))
        gate.evidence(P, items)


def test_a_poisoned_canary_is_aborted_and_an_equal_one_promoted_at_the_cap(tmp_path, world):
    registry = PolicyRegistry(tmp_path / "registry")
    publisher, events = FakePublisher(registry), []
    cfg = GateSection(stages=["heldout", "canary"],
                      canary=CanarySection(min_requests=20, max_requests=150))
    gate = text_gate(registry, world["heldout"], cfg, publisher=publisher,
                     emit=lambda kind, **fields: events.append((kind, fields)))
    _start(gate, world)
    rng = np.random.default_rng(0)

    bad = gate.submit(P, world["better"], world["files"], {})
    assert bad["decision"] == "canary" and registry.stages(P)["canary"]["version"] == 2
    assert registry.latest(P, "live").version == 1 and gate.stage(P, "canary")["version"] == 2
    assert registry.get(P, 2).gate["decision"] == "canary"  # what /v1/models shows while it runs
    assert gate.submit(P, world["base"], world["files"], {})["decision"] == "dropped"  # one at a time
    _feed(gate, rng, 1, 0.8, 2, 0.2, 400)  # v2 does badly on live traffic
    assert gate.stage(P, "canary") is None and registry.stages(P)["canary"]["version"] is None
    ended = [f for k, f in events if k == "canary_ended"][-1]
    assert ended["decision"] == "refuse" and ended["diff_cs"][1] < -0.01 and ended["candidate_requests"] < 150
    assert registry.latest(P, "live").version == 1 and registry.get(P, 2).gate["decision"] == "refuse"
    assert [s["stage"] for s in registry.get(P, 2).gate["stages"]] == ["heldout", "canary"]

    same = gate.submit(P, world["base"], world["files"], {})
    assert same["decision"] == "canary" and same["version"] == 3
    _feed(gate, rng, 1, 0.8, 3, 0.8, 2000)
    ended = [f for k, f in events if k == "canary_ended"][-1]
    assert ended["decision"] == "promote" and ended["candidate_requests"] <= 160
    assert registry.latest(P, "live").version == 3 and publisher.restored[-1][0] == 3
    assert gate.summary(P)["live_version"] == 3
    decisions = [(f["version"], f["decision"]) for k, f in events if k == "gate_decision"]
    assert decisions == [(1, "initial"), (2, "canary"), (2, "refuse"), (3, "canary"), (3, "promote")]


def test_a_canary_judged_against_a_live_version_that_changed_meanwhile_is_not_promoted(tmp_path, world):
    registry = PolicyRegistry(tmp_path / "registry")
    events = []
    cfg = GateSection(stages=["canary"], canary=CanarySection(min_requests=20, max_requests=60))
    gate = text_gate(registry, world["heldout"], cfg, publisher=FakePublisher(registry),
                     emit=lambda kind, **fields: events.append((kind, fields)))
    _start(gate, world)
    assert gate.submit(P, world["better"], world["files"], {})["decision"] == "canary"
    v3 = registry.publish(P, world["base"], files=world["files"])
    registry.promote(P, v3)  # the CLI moves live while the canary runs
    _feed(gate, np.random.default_rng(1), 1, 0.8, 2, 0.8, 1000)
    ended = [f for k, f in events if k == "canary_ended"][-1]
    assert ended["decision"] == "refuse" and "live changed to v3" in ended["reason"]
    assert registry.get(P, 2).gate["decision"] == "refuse" and registry.latest(P, "live").version == v3


def test_a_live_move_after_the_gate_looked_makes_the_swap_fail_not_a_lost_update(tmp_path, world):
    registry = PolicyRegistry(tmp_path / "registry")
    publisher, events = FakePublisher(registry), []
    cfg = GateSection(stages=["canary"], canary=CanarySection(min_requests=20, max_requests=60))
    gate = text_gate(registry, world["heldout"], cfg, publisher=publisher,
                     emit=lambda kind, **fields: events.append((kind, fields)))
    _start(gate, world)
    assert gate.submit(P, world["better"], world["files"], {})["decision"] == "canary"
    v3 = registry.publish(P, world["base"], files=world["files"])
    registry.promote(P, v3)
    gate.policy(P).live = lambda: 1  # the gate's last look still saw v1 live
    _feed(gate, np.random.default_rng(1), 1, 0.8, 2, 0.8, 1000)
    ended = [f for k, f in events if k == "canary_ended"][-1]
    assert ended["decision"] == "refuse" and "live changed" in ended["reason"]
    assert registry.latest(P, "live").version == v3 and all(r[0] != 2 for r in publisher.restored)
