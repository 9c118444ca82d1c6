"""The `groups` stage: no group of the data seen so far may lose beyond `gate.groups.tolerance`
(gate/stages/groups.py), with Holm's correction over the groups (core/stats/multiple.py)."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from core.config.feedback import FeedbackSection
from core.config.gate import GateSection
from core.stats.multiple import levels, rejected
from core.storage.registry import PolicyRegistry
from gate import Gate, GateError
from gate.kinds.text import TextKind
from tests.unit.domain_models import accuracy, domain_rows, served, trained, weights, wide_bundle
from tests.unit.test_gate import P, FakePublisher, feedback


def test_holm_rejects_at_least_what_bonferroni_does():
    p = {"a": 0.01, "b": 0.015, "c": 0.04, "d": 0.3}
    assert rejected(p, 0.05, "bonferroni") == ["a"]  # 0.05 / 4
    assert rejected(p, 0.05, "holm") == ["a", "b"]  # 0.0125, 0.0167, then 0.04 > 0.025 stops it
    assert levels(p, 0.05, "holm") == pytest.approx({"a": 0.0125, "b": 0.05 / 3, "c": 0.025, "d": 0.0})
    assert rejected({"a": 0.04}, 0.05) == ["a"]  # one group: alpha itself


# ---- a deterministic kind: each "model" carries which texts it answers right ------------------------
GROUPS = {"a": 100, "b": 100, "c": 100}
HELDOUT = [(f"{g}{i}", 0) for g, n in GROUPS.items() for i in range(n)]
TRAFFIC = [(f"{g}-traffic-{i}", 0) for g in "abcd" for i in range(20)]
NEW = [(f"d{i}", 0) for i in range(80)]  # group d: no held-out rows, only held-out feedback
INDEX = {x: i for i, (x, _) in enumerate(HELDOUT + NEW + TRAFFIC)}


class Carried(TextKind):
    def load(self, weights, files):
        return weights

    def correct(self, model, examples):
        return model["right"][[INDEX[x] for x, _ in examples]] > 0.5


def _model(**right: int) -> dict[str, np.ndarray]:
    """Right on the first `right[g]` rows of each group (held-out, and group d's feedback rows)."""
    out = np.zeros(len(INDEX), dtype=np.float32)
    for x, _ in HELDOUT + NEW:
        out[INDEX[x]] = int(x[1:]) < right.get(x[0], 0)
    return {"right": out}


LIVE = {"a": 100, "b": 50, "c": 50, "d": 40}


def _carried_gate(tmp_path, **groups) -> Gate:
    registry = PolicyRegistry(tmp_path / "registry")
    kind = Carried(HELDOUT, [x[0] for x, _ in HELDOUT], row_groups=[(x, x[0]) for x, _ in TRAFFIC + NEW])
    gate = Gate(registry, kind, GateSection(stages=["groups"], groups=groups), publisher=FakePublisher(registry))
    gate.bootstrap(P, weights=_model(**LIVE), files={})
    return gate


def _seen(gate, group: str) -> None:
    gate.evidence(P, [feedback(1, True, text=x) for x, _ in TRAFFIC if x[0] == group])


def test_a_group_is_judged_once_traffic_brings_it_and_the_verdict_names_it(tmp_path):
    gate = _carried_gate(tmp_path, tolerance=0.02)
    nothing = gate.submit(P, _model(**LIVE), {}, {})
    assert nothing["decision"] == "promote" and "no group judged yet" in nothing["reason"]  # no traffic yet
    _seen(gate, "a")
    _seen(gate, "b")
    # learns b (+30) at the cost of a (-15): refused, naming a; c lost everything but no traffic came from it
    d = gate.submit(P, _model(**{**LIVE, "a": 85, "b": 80, "c": 0}), {}, {})
    assert d["decision"] == "refuse" and "forgets group 'a'" in d["reason"], d["reason"]
    verdict = d["gate"]["stages"][-1]
    assert verdict["stage"] == "groups" and verdict["worse"] == ["a"] and set(verdict["groups"]) == {"a", "b"}
    assert verdict["groups"]["a"]["diff"] == pytest.approx(-0.15) and verdict["groups"]["b"]["diff"] > 0
    assert verdict["groups"]["a"]["level"] == pytest.approx(0.025)  # Holm: two groups, a's p the smallest
    # the same gain holding a goes live (v2's loss on c is not judged: c has sent nothing)
    ok = gate.submit(P, _model(**{**LIVE, "b": 80, "c": 0}), {}, {})
    assert ok["decision"] == "promote" and "no group lost more than 0.020" in ok["reason"], ok["reason"]
    assert gate.summary(P)["stages"]["groups"]["seen"] == {"a": 20, "b": 20}


def test_a_group_the_held_out_set_lacks_enters_with_its_held_out_feedback(tmp_path):
    gate = _carried_gate(tmp_path, tolerance=0.02, min_rows=50)
    _seen(gate, "a")
    gate.evidence(P, [feedback(1, text=x, label=0, slice="recent") for x, _ in NEW[:40]])  # below min_rows
    first = gate.submit(P, _model(**LIVE), {}, {})
    assert first["decision"] == "promote" and first["gate"]["stages"][-1]["waiting"] == ["d"]
    gate.evidence(P, [feedback(2, text=x, label=0, slice="recent") for x, _ in NEW[40:]])  # 80 rows of d now
    d = gate.submit(P, _model(**{**LIVE, "d": 0}), {}, {})  # live is right on d0..d39
    assert d["decision"] == "refuse" and "forgets group 'd'" in d["reason"], d["reason"]
    assert d["gate"]["stages"][-1]["groups"]["d"]["n"] == 80


def test_the_stage_needs_groups(tmp_path):
    with pytest.raises(ValueError, match="needs data.group_column"):
        FeedbackSection(gate={"stages": ["heldout", "groups"]})
    FeedbackSection(gate={"stages": ["heldout", "groups"]}, data={"group_column": "domain"})
    with pytest.raises(GateError, match="group_column"):
        Gate(PolicyRegistry(tmp_path / "r"), TextKind([("x", 0)]), GateSection(stages=["groups"]),
             publisher=object()).policy(P)


# ---- real classifiers: reviews of hotels, then of books ------------------------------------------
@pytest.fixture(scope="module")
def world():
    """Live knows hotels; one candidate learned the books alone and unlearned hotels doing it (the
    two domains' words lean opposite ways), the other learned the books beside the hotels."""
    torch.set_num_threads(1)
    rows = domain_rows(["hotel", "book"], 1200, seed=1)
    hotel, book = rows["hotel"], rows["book"]
    live = trained(wide_bundle([t for t, _ in hotel + book]), hotel[400:], steps=300, seed=0)
    forgets = trained(live, book[400:], steps=300, seed=1)
    both = trained(live, hotel[400:] + book[400:], steps=300, seed=2)
    return {"heldout": hotel[:200] + book[:200], "groups": ["hotel"] * 200 + ["book"] * 200, "live": live,
            "forgets": forgets, "both": both, "traffic": {"hotel": hotel[200:400], "book": book[200:400]}}


def _real_gate(tmp_path, world):
    """The drift preset's stages; the stream has brought hotels, then books."""
    registry = PolicyRegistry(tmp_path / "registry")
    row_groups = [(t, g) for g, rows in world["traffic"].items() for t, _ in rows]
    gate = Gate(registry, TextKind(world["heldout"], world["groups"], row_groups=row_groups),
                GateSection(stages=["heldout", "groups"]), publisher=FakePublisher(registry))
    gate.bootstrap(P, weights=weights(world["live"]), files=world["live"].files())
    for group in ("hotel", "book"):
        gate.evidence(P, served(world["live"], world["traffic"][group], version=1))
    return gate


def _on_each(world, model: str) -> tuple[float, float]:
    return accuracy(world[model], world["heldout"][:200]), accuracy(world[model], world["heldout"][200:])


def test_a_candidate_that_learns_a_new_group_by_forgetting_an_old_one_is_refused_naming_it(tmp_path, world):
    gate = _real_gate(tmp_path, world)
    d = gate.submit(P, weights(world["forgets"]), world["forgets"].files(), {})
    heldout, groups = d["gate"]["stages"][0], d["gate"]["stages"][-1]
    assert heldout["stage"] == "heldout" and heldout["decision"] == "promote"  # better on the whole set
    assert d["decision"] == "refuse" and "forgets group 'hotel'" in d["reason"], (d["reason"], _on_each(world, "live"))
    assert groups["worse"] == ["hotel"] and groups["groups"]["hotel"]["diff"] < -0.1, groups
    assert groups["groups"]["book"]["diff"] > 0.1, groups


def test_a_candidate_that_gains_on_the_new_group_and_holds_the_old_is_promoted(tmp_path, world):
    gate = _real_gate(tmp_path, world)
    d = gate.submit(P, weights(world["both"]), world["both"].files(), {})
    assert d["decision"] == "promote", (d["reason"], _on_each(world, "live"), _on_each(world, "both"))
    groups = d["gate"]["stages"][-1]["groups"]
    assert groups["book"]["diff"] > 0.1 and groups["hotel"]["diff"] >= -0.02, groups
