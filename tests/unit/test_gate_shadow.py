"""The gate's shadow stage without Ray: the candidate's answers beside live's, judged on the joined feedback."""

from __future__ import annotations

import numpy as np
import pytest

from core.stats.exploration import ExplorationSection, choose, serving_distribution
from core.config.gate import CanarySection, GateSection, ShadowSection
from core.data.labeled import sentiment_reviews
from core.storage.registry import PolicyRegistry
from core.models.classifier import from_version
from gate import GateError
from gate.kinds.text import TextKind
from gate.stage import check_stages
from serving.catalog import describe_policies
from tests.unit.test_gate import P, FakePublisher, _start, feedback, text_gate, world  # noqa: F401 (world: a fixture)

MIN_ROWS = 200


def _shadowed_rows(world, candidate: dict, version: int, n: int, p_label: float, seed: int = 0) -> list[dict]:
    """Traffic live (v1) answered with epsilon 0.3 exploration while `candidate` (the shadow `version`)
    answered too: the joined rows the joiner hands the gate."""
    rows = sentiment_reviews()
    rng = np.random.default_rng(seed)
    pick = rng.permutation(len(rows))[-n:]  # away from the fixture's 500 train / held-out rows
    texts, labels = [rows[i][0] for i in pick], np.array([rows[i][1] for i in pick])
    probs = from_version(world["base"], world["files"]).predict_proba(texts)
    actions, mu = choose(serving_distribution(probs, ExplorationSection(kind="epsilon", epsilon=0.3)), rng)
    shadow = from_version(candidate, world["files"]).predict_proba(texts).argmax(1)
    out = []
    for a, m, y, p, s in zip(actions, mu, labels, probs, shadow):
        labeled = rng.random() < p_label
        out.append({"prediction": int(a), "propensity": float(m), "probs": p.tolist(), "policy_version": 1,
                    "label": int(y) if labeled else None, "reward": None if labeled else float(a == y),
                    "shadow_version": version, "shadow_prediction": int(s)})
    return out


def _joined(rows: list[dict]) -> list[dict]:
    return [{"type": "feedback", "row": r} for r in rows]


def _feed(gate, rows: list[dict], push: int = 10) -> None:
    """In pushes of `push`, as the joiner sends them."""
    for i in range(0, len(rows), push):
        gate.evidence(P, _joined(rows[i:i + push]))


def _gate(tmp_path, world, stages, events, **shadow):
    registry = PolicyRegistry(tmp_path / "registry")
    cfg = GateSection(stages=stages, shadow=ShadowSection(min_rows=MIN_ROWS, bootstrap_samples=200, **shadow),
                      canary=CanarySection(min_requests=20, max_requests=100))
    publisher = FakePublisher(registry)
    gate = text_gate(registry, world["heldout"], cfg, publisher=publisher,
                     emit=lambda kind, **fields: events.append((kind, fields)))
    _start(gate, world)
    return gate, registry, publisher


@pytest.mark.parametrize("p_label", [0.0, 0.5])
def test_a_poisoned_shadow_is_refused_after_min_rows_and_an_equal_one_goes_live(tmp_path, world, p_label):
    events: list = []
    gate, registry, publisher = _gate(tmp_path, world, ["shadow"], events)
    bad = gate.submit(P, world["poisoned"], world["files"], {})
    assert bad["decision"] == "shadow" and registry.stages(P)["shadow"]["version"] == 2
    assert registry.latest(P, "live").version == 1 and gate.stage(P, "shadow")["version"] == 2
    (flight,) = describe_policies(registry)["policies"][0]["in_flight"]  # what /v1/models shows while it runs
    assert flight["version"] == 2 and flight["stage"] == "shadow" and "shadow on" in flight["reason"]
    assert gate.submit(P, world["base"], world["files"], {})["decision"] == "dropped"  # one at a time

    rows = _shadowed_rows(world, world["poisoned"], 2, MIN_ROWS + 100, p_label)
    _feed(gate, rows[:MIN_ROWS - 10])
    assert gate.stage(P, "shadow")["rows"] == MIN_ROWS - 10  # not decided before min_rows
    gate.evidence(P, _joined([{**r, "shadow_version": 9} for r in rows[-10:]]))  # another shadow's rows: ignored
    gate.evidence(P, _joined([{**r, "policy_version": 7} for r in rows[-10:]]))  # served by another live: ignored
    assert gate.stage(P, "shadow")["rows"] == MIN_ROWS - 10
    _feed(gate, rows[MIN_ROWS - 10:])
    assert gate.stage(P, "shadow") is None and registry.stages(P)["shadow"]["version"] is None
    assert describe_policies(registry)["policies"][0]["in_flight"] == []
    ended = [f for k, f in events if k == "shadow_ended"][-1]
    assert ended["decision"] == "refuse" and ended["diff_ci"][1] < -gate.config.tolerance, ended
    assert ended["exposure"] == MIN_ROWS and ended["n"] == MIN_ROWS
    assert ended["labeled"] == sum(r["label"] is not None for r in rows[:MIN_ROWS])
    lineage = registry.get(P, 2).gate
    assert lineage["decision"] == "refuse" and [s["stage"] for s in lineage["stages"]] == ["shadow"]
    assert lineage["stages"][0]["diff"] == ended["diff"] and registry.latest(P, "live").version == 1

    same = gate.submit(P, world["base"], world["files"], {})
    assert same["decision"] == "shadow" and same["version"] == 3
    _feed(gate, _shadowed_rows(world, world["base"], 3, MIN_ROWS, p_label, seed=1))
    ended = [f for k, f in events if k == "shadow_ended"][-1]
    assert ended["decision"] == "promote" and ended["diff"] == 0.0, ended  # the same answers: no difference
    assert registry.latest(P, "live").version == 3 and publisher.restored[-1][0] == 3
    assert gate.summary(P)["live_version"] == 3 and registry.get(P, 3).gate["decision"] == "promote"
    decisions = [(f["version"], f["decision"]) for k, f in events if k == "gate_decision"]
    assert decisions == [(1, "initial"), (2, "shadow"), (2, "refuse"), (3, "shadow"), (3, "promote")]


def test_a_shadow_that_passes_goes_on_to_the_canary_with_every_stage_in_its_lineage(tmp_path, world):
    events: list = []
    gate, registry, _ = _gate(tmp_path, world, ["heldout", "shadow", "canary"], events)
    assert gate.submit(P, world["base"], world["files"], {})["decision"] == "shadow"
    _feed(gate, _shadowed_rows(world, world["base"], 2, MIN_ROWS, 0.5))
    assert gate.stage(P, "shadow") is None and gate.stage(P, "canary")["version"] == 2
    stages = registry.stages(P)
    assert stages["canary"]["version"] == 2 and stages["shadow"]["version"] is None
    (flight,) = describe_policies(registry)["policies"][0]["in_flight"]
    assert flight["stage"] == "canary" and [e["stage"] for e in flight["evidence"]] == ["heldout", "shadow"]
    assert stages["live"]["version"] == 1
    assert gate.submit(P, world["better"], world["files"], {})["decision"] == "dropped"  # the canary runs
    rng = np.random.default_rng(0)
    for _ in range(100):  # the canary's feedback: both arms equally good
        gate.evidence(P, [feedback(2 if rng.random() < 0.5 else 1, reward=float(rng.random() < 0.8))
                          for _ in range(10)])
        if gate.stage(P, "canary") is None:
            break
    assert registry.latest(P, "live").version == 2
    lineage = registry.get(P, 2).gate
    assert [s["stage"] for s in lineage["stages"]] == ["heldout", "shadow", "canary"]
    assert lineage["stages"][1]["decision"] == "promote" and lineage["stages"][1]["exposure"] == MIN_ROWS
    decisions = [(f["version"], f["decision"]) for k, f in events if k == "gate_decision"]
    assert decisions == [(1, "initial"), (2, "shadow"), (2, "canary"), (2, "promote")]


def test_a_shadow_without_traffic_is_refused_at_max_s_and_the_next_candidate_gets_its_turn(tmp_path, world):
    events: list = []
    gate, registry, _ = _gate(tmp_path, world, ["shadow"], events, max_s=60)
    assert gate.submit(P, world["base"], world["files"], {})["decision"] == "shadow"
    gate.policy(P).stages["shadow"].run.started -= 61  # a minute without shadowed feedback
    nxt = gate.submit(P, world["better"], world["files"], {})
    assert nxt["decision"] == "shadow" and nxt["version"] == 3 and gate.stage(P, "shadow")["version"] == 3
    ended = [f for k, f in events if k == "shadow_ended"]
    assert len(ended) == 1 and ended[0]["decision"] == "refuse" and "not enough shadow evidence" in ended[0]["reason"]
    assert registry.get(P, 2).gate["decision"] == "refuse" and registry.latest(P, "live").version == 1


def test_shadow_must_come_after_the_offline_stages_and_before_the_canary():
    kind = TextKind([("text", 0)])
    assert list(check_stages(GateSection(stages=["heldout", "ope", "shadow", "canary"]), kind.gives, kind.name)) \
        == ["heldout", "ope", "shadow", "canary"]
    for stages in (["shadow", "heldout"], ["shadow", "ope", "canary"], ["canary", "shadow"]):
        with pytest.raises(GateError, match="shadow|canary"):
            check_stages(GateSection(stages=stages), kind.gives, kind.name)


# ---- the replica and the joiner's side --------------------------------------------------------
def test_a_replica_follows_the_shadow_stage_and_draws_it_per_request_not_per_client(tmp_path, world):
    from serving.classify import Served
    from serving.stage_follower import StageFollower

    registry = PolicyRegistry(tmp_path / "registry")
    registry.promote(P, registry.publish(P, world["base"], files=world["files"]))
    v2 = registry.publish(P, world["poisoned"], files=world["files"])
    follower = StageFollower(str(tmp_path / "registry"), P, 0.5, lambda w, f, v: Served(from_version(w, f), v),
                             stage="shadow", sticky=False)
    assert follower.refresh() is None and follower.routes("user-1") is None  # no shadow yet
    registry.promote(P, v2, stage="shadow")
    assert follower.refresh() == v2 and follower.current.version == v2
    drawn = [follower.routes("user-1") is not None for _ in range(400)]
    assert 0.35 < np.mean(drawn) < 0.65  # the same client: drawn anew each request, about `fraction`
    registry.clear(P, "shadow")
    assert follower.refresh() is None and follower.routes("user-1") is None


def test_the_client_gets_lives_answer_and_the_event_carries_the_shadows(world):
    from core.models.classifier import from_version as load
    from serving.classify import Served, classify, greedy_answers

    w = world
    texts = [t for t, _ in w["heldout"][:20]]
    live, shadow = Served(load(w["base"], w["files"]), 1), Served(load(w["poisoned"], w["files"]), 2)
    answers = greedy_answers(shadow, texts)
    plain, _ = classify(live, texts, P, "serve-test")
    preds, events = classify(live, texts, P, "serve-test", shadow=answers)
    strip = ("event_id",)
    assert [{k: v for k, v in p.items() if k not in strip} for p in preds] \
        == [{k: v for k, v in p.items() if k not in strip} for p in plain]  # unchanged for the client
    assert {p["model_version"] for p in preds} == {1}
    assert [e["shadow_version"] for e in events] == [2] * len(texts)
    assert [e["shadow_prediction"] for e in events] == [1 - e["prediction"] for e in events]  # the flipped head
    _, unshadowed = classify(live, texts[:2], P, "serve-test")
    assert [(e["shadow_version"], e["shadow_prediction"]) for e in unshadowed] == [(None, None)] * 2


def test_the_joiner_hands_shadowed_feedback_to_the_gate_and_keeps_it_out_of_the_replay_rows():
    import asyncio

    from serving.join import Joiner
    from tests.unit.test_feedback_join import FakeGate, FlakyWriter, _event

    n = 40

    async def run():
        writer, gate = FlakyWriter(), FakeGate()
        joiner = Joiner(writer, 60.0, commit_interval_s=0.001, gate_name="evolve-gate-sentiment",
                        policy_id="sentiment", push_every=10)
        joiner._gate = gate
        await joiner.record([{**_event(i, prediction=1), "propensity": 1.0, "shadow_version": 4,
                              "shadow_prediction": 0} if i % 2 else _event(i) for i in range(n)])
        for i in range(n):
            assert (await joiner.feedback(f"e{i}", "pos"))["status"] == 200
        assert await joiner.flush(timeout_s=10)
        return writer, gate

    writer, gate = asyncio.run(run())
    assert len(writer.rows["feedback"]) == n  # every row trained on, none with a shadow column
    assert not any("shadow_version" in r for r in writer.rows["feedback"].values())
    shadowed = [item["row"] for item in gate.items("feedback") if item["row"].get("shadow_prediction") is not None]
    assert len(shadowed) == n // 2 and {r["shadow_version"] for r in shadowed} == {4}
    assert all(r["shadow_prediction"] == 0 and r["prediction"] == 1 and r["label"] == 1 for r in shadowed)
    assert {r["policy_version"] for r in shadowed} == {3}
    kind = TextKind([("t", 0)])
    assert all(kind.read({"type": "feedback", "row": r}).shadow[0] == 4 for r in shadowed)  # the gate's shadow evidence
