"""The rollback guard compares models, not moments: live against the version before it on the same
labeled feedback (gate/stages/rollback.py), with tiny real classifiers on reviews of hotels and books."""

from __future__ import annotations

import pytest
import torch

from core.config.adapt import AdaptSection
from core.config.gate import GateSection
from core.storage.registry import PolicyRegistry
from gate import Gate
from gate.kinds.text import TextKind
from tests.unit.domain_models import (accuracy, domain_rows, flipped, head_flipped, served, starting_bundle, trained,
                                      weights)
from tests.unit.test_gate import P, FakePublisher

WINDOW = 300  # the guard's defaults: window 300, 100 labeled rows, margin 0.1, 3 clients, share 0.2


@pytest.fixture(scope="module")
def reviews():
    """A classifier of hotel and book reviews (v1), a copy tuned a little more, and its head flipped."""
    torch.set_num_threads(1)
    rows = domain_rows(["hotel", "book"], 1600, seed=0)
    train = rows["hotel"][:800] + rows["book"][:800]
    base = trained(starting_bundle([t for t, _ in train]), train, steps=200, seed=0)
    tuned = trained(base, train, steps=20, seed=1, lr=5e-4)
    heldout = rows["hotel"][800:1000] + rows["book"][800:1000]
    assert accuracy(base, heldout) > 0.62, "the starting classifier must know the reviews for these tests to mean anything"
    return {"heldout": heldout, "hotel": rows["hotel"][1000:], "book": rows["book"][1000:],
            "base": base, "tuned": tuned, "flipped": head_flipped(base)}


def _gate(tmp_path, reviews, stages: list[str], adapt: bool = True):
    registry = PolicyRegistry(tmp_path / "registry")
    events: list[tuple[str, dict]] = []
    gate = Gate(registry, TextKind(reviews["heldout"]), GateSection(stages=stages),
                publisher=FakePublisher(registry), emit=lambda kind, **fields: events.append((kind, fields)),
                adapt=AdaptSection(enabled=True) if adapt else None)
    gate.bootstrap(P, weights=weights(reviews["base"]), files=reviews["base"].files())
    return gate, registry, events


def _until_rollback(gate, items, batch: int = 10) -> tuple[int, dict | None]:
    """Hand the items over in batches as the joiner does; (feedback events handed, the rollback check)."""
    for start in range(0, len(items), batch):
        window = gate.evidence(P, items[start:start + batch])["window"]
        if window is not None and window["rollback"]:
            return start + batch, window
    return len(items), None


def test_a_live_version_corrupted_during_a_drift_is_rolled_back_within_300_feedback_events(tmp_path, reviews):
    gate, registry, events = _gate(tmp_path, reviews, stages=[])  # no stage: every version goes live
    gate.evidence(P, served(reviews["base"], reviews["hotel"], version=1))  # the stream on hotels, v1 right
    assert gate.submit(P, weights(reviews["flipped"]), reviews["flipped"].files(), {})["decision"] == "promote"
    assert registry.latest(P, "live").version == 2  # corrupted: every answer reversed
    # the stream moves to books, v2 answers it: its accuracy falls and the drift detector alarms
    handed, window = _until_rollback(gate, served(reviews["flipped"], reviews["book"][:WINDOW], version=2))
    alarms = [f for k, f in events if k == "adapt" and f["actions"]]
    assert alarms and alarms[0]["signal"] == "correctness", "no drift alarm: the corruption was not during a drift"
    assert window is not None and handed <= WINDOW, f"no rollback within {WINDOW} feedback events"
    assert window["rolled_back_to"] == 1 and registry.latest(P, "live").version == 1
    assert window["target_recent_accuracy"] - window["live_recent_accuracy"] > 0.3 and window["p_value"] < 0.05
    rollback = gate.summary(P)["rollbacks"][0]
    assert (rollback["from"], rollback["to"], rollback["trigger"]) == (2, 1, "prequential")
    assert "v1 better than live" in rollback["reason"] and not [k for k, _ in events if k == "world_changed"]


def test_a_world_change_that_hurts_both_versions_alike_is_reported_not_rolled_back(tmp_path, reviews):
    gate, registry, events = _gate(tmp_path, reviews, stages=["heldout"])
    d = gate.submit(P, weights(reviews["tuned"]), reviews["tuned"].files(), {})
    assert d["decision"] == "promote", d["reason"]  # v2: the gate found it no worse
    # the users of books now mean the other label: both versions are as wrong as each other
    handed, window = _until_rollback(gate, served(reviews["tuned"], flipped(reviews["book"][:2 * WINDOW]), version=2))
    assert window is None and registry.latest(P, "live").version == 2 and gate.summary(P)["rollbacks"] == []
    changed = [f for k, f in events if k == "world_changed"]
    assert len(changed) == 1, changed  # once, not once per evidence call
    c = changed[0]
    assert (c["version"], c["target"]) == (2, 1) and c["n"] >= 100
    assert c["live_recent_accuracy"] < c["live_heldout_accuracy"] - 0.1
    assert c["target_recent_accuracy"] < c["target_heldout_accuracy"] - 0.1
    assert abs(c["diff"]) < 0.1 and "the world changed" in c["reason"]
    assert gate.summary(P)["world_changes"] == [{k: v for k, v in c.items() if k != "policy_id"}]


def test_feedback_one_client_sends_or_without_labels_never_rolls_back(tmp_path, reviews):
    gate, registry, events = _gate(tmp_path, reviews, stages=[], adapt=False)
    gate.submit(P, weights(reviews["flipped"]), reviews["flipped"].files(), {})
    hotel = reviews["hotel"][:WINDOW]
    one = gate.evidence(P, served(reviews["flipped"], hotel, version=2, clients=1, who="mallory"))["window"]
    assert not one["rollback"] and "1 client(s)" in one["reason"]
    anonymous = gate.evidence(P, served(reviews["flipped"], hotel, version=2, clients=None))["window"]
    assert not anonymous["rollback"] and "1 client(s)" in anonymous["reason"]
    rewards = gate.evidence(P, served(reviews["flipped"], hotel, version=2, labeled=False))["window"]
    assert not rewards["rollback"] and "0 labeled feedback rows" in rewards["reason"]  # nothing to pair
    assert registry.latest(P, "live").version == 2
    handed, window = _until_rollback(gate, served(reviews["flipped"], hotel, version=2))
    assert window is not None and registry.latest(P, "live").version == 1


def test_with_no_earlier_version_a_fall_is_reported_once(tmp_path, reviews):
    gate, registry, events = _gate(tmp_path, reviews, stages=[], adapt=False)
    rows = served(reviews["base"], flipped(reviews["hotel"][:WINDOW]), version=1)
    checks = [gate.evidence(P, rows[i:i + 50])["window"] for i in range(0, WINDOW, 50)]
    assert not any(c["rollback"] for c in checks) and "no earlier version to roll back to" in checks[-1]["reason"]
    assert [k for k, _ in events].count("rollback_impossible") == 1


def test_the_earlier_version_answers_each_row_once(tmp_path, reviews):
    """The guard scores the target on new rows only: a row it has paired is not scored again."""
    gate, _, _ = _gate(tmp_path, reviews, stages=["heldout"], adapt=False)
    gate.submit(P, weights(reviews["tuned"]), reviews["tuned"].files(), {})
    scored: list[int] = []
    kind = gate.kind
    score = kind.correct
    kind.correct = lambda model, examples: (scored.append(len(examples)), score(model, examples))[1]
    rows = served(reviews["tuned"], reviews["hotel"][:WINDOW], version=2)
    for start in range(0, WINDOW, 50):
        gate.evidence(P, rows[start:start + 50])
    assert scored[0] == 100 and scored[1:] == [50] * 4, scored  # 100 at the first test, then the 50 new each time
