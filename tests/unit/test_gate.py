"""The publish gate without Ray, for a text classifier: a tiny real classifier, a registry in tmp_path, a fake publisher."""

from __future__ import annotations

import json
import threading
import time

import numpy as np
import pytest
import torch
from transformers import BertConfig

from core.config.gate import GateSection
from core.data.labeled import sentiment_reviews
from core.storage.registry import PolicyRegistry
from core.models.classifier import ClassifierBundle, from_encoder, from_version
from core.models.tokenizer import tokenizer_files, train_wordpiece
from gate import Gate, GateError
from gate.kinds.text import TextKind
from gate.pointer import rollback_registry

P = "sentiment"
CFG = GateSection(test="mcnemar", tolerance=0.01, alpha=0.05, window=20, rollback_margin=0.1)


def text_gate(registry, heldout, config=None, groups=None, **kwargs) -> Gate:
    """The gate of a text classifier whose fixed held-out set is `heldout`."""
    return Gate(registry, TextKind(heldout, groups), config if config is not None else CFG, **kwargs)


def feedback(version: int, right: bool | None = None, reward: float | None = None, client: str | None = None,
             text: str = "t", label: int | None = None, slice: str | None = None) -> dict:
    """A joined feedback as the joiner hands it to the gate: live answered label 1 (its greedy answer)."""
    if right is not None:
        label = 1 if right else 0
    row = {"policy_version": version, "text": text, "prediction": 1, "probs": [0.2, 0.8], "propensity": 1.0,
           "label": label, "reward": None if label is not None else reward}
    return {"type": "feedback", "row": row, "client": client, "slice": slice}


def _train(bundle: ClassifierBundle, rows, steps: int, seed: int, flip: bool = False) -> None:
    texts, labels = [t for t, _ in rows], torch.tensor([1 - y if flip else y for _, y in rows])
    opt = torch.optim.AdamW(bundle.model.parameters(), lr=2e-3)
    gen = torch.Generator().manual_seed(seed)
    bundle.model.train()
    for _ in range(steps):
        i = torch.randint(0, len(texts), (32,), generator=gen)
        ids, mask, types = bundle.encode([texts[j] for j in i])
        loss = torch.nn.functional.cross_entropy(bundle.model(ids, mask, types), labels[i])
        opt.zero_grad()
        loss.backward()
        opt.step()


def _numpy(bundle: ClassifierBundle) -> dict[str, np.ndarray]:
    return {k: v.numpy().copy() for k, v in bundle.weights().items()}


@pytest.fixture(scope="module")
def world():
    """300 training reviews, 200 held-out ones, a live model better than chance and candidates derived from it."""
    torch.set_num_threads(1)
    rows = sentiment_reviews()
    pick = np.random.default_rng(0).permutation(len(rows))[:500]
    train, heldout = [rows[i] for i in pick[:300]], [rows[i] for i in pick[300:]]
    tok = train_wordpiece([t for t, _ in train], vocab_size=400, min_frequency=2)
    config = BertConfig(vocab_size=len(tok), hidden_size=64, num_hidden_layers=2, num_attention_heads=2,
                        intermediate_size=128, max_position_embeddings=64)
    enc_files = {**tokenizer_files(tok), "config.json": json.dumps(config.to_dict(), default=str).encode()}
    live = from_encoder(None, enc_files, ["neg", "pos"], max_len=32, seed=0)
    _train(live, train, steps=40, seed=0)
    files = live.files()
    base = _numpy(live)
    better = from_version(base, files)
    _train(better, train, steps=20, seed=1)
    poisoned = {k: v.copy() for k, v in base.items()}
    poisoned["head.weight"], poisoned["head.bias"] = base["head.weight"][::-1].copy(), base["head.bias"][::-1].copy()
    return {"heldout": heldout, "files": files, "base": base, "better": _numpy(better), "poisoned": poisoned}


class FakePublisher:
    """What PolicyPublisher does to the registry (store + promote), minus Ray."""

    def __init__(self, registry: PolicyRegistry):
        self.registry, self.published, self.restored = registry, [], []
        self.block: threading.Event | None = None

    def publish(self, policy_id, weights, metadata, spec, files):
        if self.block is not None:
            self.block.wait(10)
        version = self.registry.publish(policy_id, weights, metadata, files=files)
        self.registry.promote(policy_id, version)
        self.published.append((version, spec))
        return version

    def restore(self, policy_id, weights, version, spec):
        self.restored.append((version, weights))


@pytest.fixture
def setup(tmp_path, world):
    registry = PolicyRegistry(tmp_path / "registry")
    publisher = FakePublisher(registry)
    events: list[tuple[str, dict]] = []
    gate = text_gate(registry, world["heldout"], publisher=publisher,
                     emit=lambda kind, **fields: events.append((kind, fields)))
    return gate, registry, publisher, events


def _start(gate, world) -> dict:
    return gate.bootstrap(P, weights=world["base"], files=world["files"], metadata={"info": {"source": "test"}})


def test_bootstrap_makes_version_1_live_and_records_initial_accuracy(setup, world):
    gate, registry, publisher, events = setup
    d = _start(gate, world)
    assert d["decision"] == "initial" and d["version"] == 1 and publisher.published == [(1, {"kind": "text_classifier"})]
    assert registry.latest(P, "live").version == 1
    meta = registry.get(P, 1)
    assert meta.gate["decision"] == "initial" and meta.metrics["heldout_accuracy"] == d["heldout_accuracy"]
    s = gate.summary()
    assert s["initial_heldout_accuracy"] == s["heldout_accuracy"] == d["heldout_accuracy"] > 0.55
    assert [k for k, _ in events] == ["gate_decision"]


def test_first_submit_without_bootstrap_goes_live(setup, world):
    gate, registry, _, _ = setup
    d = gate.submit(P, world["base"], world["files"], {})
    assert d["decision"] == "initial" and registry.latest(P, "live").version == 1


def test_same_and_better_candidates_are_promoted(setup, world):
    gate, registry, publisher, events = setup
    _start(gate, world)
    same = gate.submit(P, world["base"], world["files"], {"data_range": {"events": 100}})
    assert same["decision"] == "promote" and same["version"] == 2 and same["gate"]["diff"] == 0.0
    better = gate.submit(P, world["better"], world["files"], {"data_range": {"events": 200}, "metrics": {"loss": 0.5}})
    assert better["decision"] == "promote", better["reason"]
    assert registry.latest(P, "live").version == 3
    meta = registry.get(P, 3)
    assert meta.parent_version == 2 and meta.gate["decision"] == "promote" and meta.gate["compared_with"] == 2
    assert meta.metrics["loss"] == 0.5 and meta.metrics["parent_heldout_accuracy"] == same["heldout_accuracy"]
    s = gate.summary(P)
    assert s["promoted"] == 3 and s["refused"] == 0 and s["live_version"] == 3
    assert [c["version"] for c in s["curve"]] == [1, 2, 3] and s["curve"][-1]["events"] == 200
    assert [p["decision"] for p in s["promotions"]] == ["initial", "promote", "promote"]


def test_poisoned_candidate_is_refused_stored_but_never_live(setup, world):
    gate, registry, publisher, events = setup
    start = _start(gate, world)
    d = gate.submit(P, world["poisoned"], world["files"], {})
    assert d["decision"] == "refuse" and "worse than live" in d["reason"]
    assert d["heldout_accuracy"] < start["heldout_accuracy"] - 0.1
    assert d["version"] == 2 and registry.latest(P, "live").version == 1
    assert 2 not in registry.stages(P)["live"]["history"] and [v for v, _ in publisher.published] == [1]
    lineage = registry.lineage(P, 2)
    assert [m.version for m in lineage] == [2, 1] and lineage[0].gate["decision"] == "refuse"
    s = gate.summary()
    assert s["refused"] == 1 and s["live_version"] == 1 and s["heldout_accuracy"] == start["heldout_accuracy"]
    kinds = [(k, f["decision"]) for k, f in events]
    assert kinds == [("gate_decision", "initial"), ("gate_decision", "refuse")]
    assert events[-1][1]["p_value"] < 0.05 and events[-1][1]["test"].startswith("mcnemar")


def test_bootstrap_test_refuses_the_poisoned_candidate_too(tmp_path, world):
    registry = PolicyRegistry(tmp_path / "r")
    gate = text_gate(registry, world["heldout"], GateSection(test="bootstrap", bootstrap_samples=200),
                     publisher=FakePublisher(registry))
    _start(gate, world)
    assert gate.submit(P, world["poisoned"], world["files"], {})["decision"] == "refuse"
    assert gate.submit(P, world["base"], world["files"], {})["decision"] == "promote"


def test_rollback_restores_the_previous_version(setup, world):
    gate, registry, publisher, events = setup
    _start(gate, world)
    gate.submit(P, world["better"], world["files"], {})
    r = gate.rollback(P)
    assert (r["from"], r["to"], r["trigger"]) == (2, 1, "manual") and registry.latest(P, "live").version == 1
    version, weights = publisher.restored[-1]
    assert version == 1 and np.array_equal(weights["head.weight"], world["base"]["head.weight"])
    assert "rolled_back" in registry.get(P, 2).info
    assert gate.summary()["rollbacks"][0]["to"] == 1 and events[-1][0] == "rollback"
    with pytest.raises(GateError, match="no earlier"):  # v2 was rolled back from: never "back" to it
        gate.rollback(P)


def test_newest_candidate_wins_when_several_queue_up(setup, world):
    gate, registry, publisher, events = setup
    _start(gate, world)
    publisher.block = threading.Event()
    results: dict[str, dict] = {}

    def submit(name):
        results[name] = gate.submit(P, world["base"], world["files"], {"info": {"name": name}})

    threads = {}
    for name, ticket in (("a", 1), ("b", 2), ("c", 3)):
        threads[name] = threading.Thread(target=submit, args=(name,))
        threads[name].start()
        deadline = time.monotonic() + 10
        while gate.policy(P).records.ticket < ticket and time.monotonic() < deadline:
            time.sleep(0.005)
    publisher.block.set()
    for t in threads.values():
        t.join(20)
    assert results["a"]["decision"] == "promote" and results["c"]["decision"] == "promote"
    assert results["b"]["decision"] == "dropped" and "superseded" in results["b"]["reason"]
    assert registry.versions(P) == [1, 2, 3] and gate.summary()["dropped"] == 1
    assert any(k == "gate_dropped" for k, _ in events)


def test_resumed_gate_re_announces_the_live_version(setup, tmp_path, world):
    gate, registry, _, _ = setup
    start = _start(gate, world)
    gate.submit(P, world["better"], world["files"], {})
    publisher = FakePublisher(registry)
    again = text_gate(registry, world["heldout"], publisher=publisher)
    d = again.bootstrap(P)
    assert d["decision"] == "resumed" and d["version"] == 2 and publisher.restored[0][0] == 2
    assert again.summary()["initial_heldout_accuracy"] == start["heldout_accuracy"]


def test_nothing_to_start_from(setup):
    gate, *_ = setup
    with pytest.raises(GateError, match="no live version"):
        gate.bootstrap(P)


def test_cli_rollback_on_a_registry_uri(tmp_path, world):
    uri = str(tmp_path / "registry")
    registry = PolicyRegistry(uri)
    for _ in range(3):
        registry.promote(P, registry.publish(P, world["base"], {}, files=world["files"]))
    assert rollback_registry(uri, P) == {"policy_id": P, "from": 3, "to": 2, "reason": "manual"}
    assert rollback_registry(uri, P)["to"] == 1  # not back to 3: it was rolled back from
    r = rollback_registry(uri, P, to=3, reason="operator")  # explicitly live again: the mark goes
    assert r["to"] == 3 and "rolled_back" not in registry.get(P, 3).info
    with pytest.raises(GateError, match="already live"):
        rollback_registry(uri, P, to=3)


def test_candidate_that_cannot_be_rebuilt_is_an_error_event(setup, world):
    from core.models.classifier import ClassifierError

    gate, registry, _, events = setup
    _start(gate, world)
    files = {k: v for k, v in world["files"].items() if k != "labels.json"}
    with pytest.raises(ClassifierError, match="labels.json"):
        gate.submit(P, world["base"], files, {})
    assert events[-1][0] == "gate_error" and registry.versions(P) == [1]


def test_online_learner_metadata_fits_the_registry(setup, world):
    gate, registry, _, _ = setup
    _start(gate, world)
    meta = {"parent_version": 1, "updates": 50,
            "metrics": {"train_loss": 0.6, "baseline": None, "bad": float("nan"), "skipped_nonfinite": 0},
            "data_range": {"table": "feedback", "total": {"rows": 900, "fresh_rows": 640}},
            "info": {"objective": "online"}}
    d = gate.submit(P, world["base"], world["files"], meta)
    assert d["decision"] == "promote" and d["events"] == 640 and d["parent"] == d["lineage_parent"] == 1
    stored = registry.get(P, 2)
    assert stored.info["updates"] == 50 and stored.info["objective"] == "online"
    assert stored.metrics["train_loss"] == 0.6 and "bad" not in stored.metrics
    assert set(stored.info["metrics_not_numbers"]) == {"baseline", "bad"}
    assert gate.summary()["curve"][-1]["events"] == 640


@pytest.mark.parametrize("drift_guard", [True, False])
def test_drift_guard_stops_a_slide_of_small_accepted_losses(tmp_path, monkeypatch, drift_guard):
    """Each step loses 0.8 points (within tolerance 1.0) to live; two steps lose 1.6 to the best."""
    n = 1000

    def version(right: int) -> dict:  # a "model" that carries its held-out correctness
        return {"correct": (np.arange(n) < right).astype(np.float32)}

    class Carried(TextKind):
        def load(self, weights, files):
            return weights

        def correct(self, model, examples):
            return model["correct"] > 0.5

    registry = PolicyRegistry(tmp_path / "registry")
    cfg = CFG.model_copy(update={"drift_guard": drift_guard})
    gate = Gate(registry, Carried([("text", 0)] * n), cfg, publisher=FakePublisher(registry))
    assert gate.submit(P, version(800), {}, {})["decision"] == "initial"
    assert gate.submit(P, version(792), {}, {})["decision"] == "promote"
    third = gate.submit(P, version(784), {}, {})  # -0.008 vs live v2, -0.016 vs the best, v1
    if drift_guard:
        assert third["decision"] == "refuse" and third["reason"].startswith("drifted: worse than v1"), third["reason"]
        assert registry.latest(P, "live").version == 2
    else:
        assert third["decision"] == "promote" and registry.latest(P, "live").version == 3


def test_the_data_section_gives_the_gate_the_same_held_out_rows_every_time():
    """The gate actor is handed `feedback.data` (not the rows, which Ray would keep in the
    object store for restarts): it must read back exactly the set the loop kept off the traffic."""
    from core.config.feedback import DataSection
    from core.data.labeled import load_labeled

    section = DataSection(max_heldout=50)
    first = DataSection.model_validate(section.model_dump(mode="json")).load()  # as the actor gets it
    assert first.heldout == load_labeled(max_heldout=50).heldout == section.load().heldout
    assert len(first.heldout) == 50 and not set(first.heldout) & set(first.train)


def _adaptive_gate(tmp_path, world, **adapt):
    from core.config.adapt import AdaptSection

    registry = PolicyRegistry(tmp_path / "registry")
    events: list[tuple[str, dict]] = []
    cfg = AdaptSection(**{"enabled": True, "cooldown_events": 500, **adapt})
    groups = ["a" if i % 2 else "b" for i in range(len(world["heldout"]))]
    gate = text_gate(registry, world["heldout"], groups=groups, publisher=FakePublisher(registry), adapt=cfg,
                     emit=lambda kind, **fields: events.append((kind, fields)))
    return gate, registry, events


def scores(version: int, values) -> list[dict]:
    """Anonymous feedback (one sender: never enough for the rollback guard) scoring `version`."""
    return [feedback(version, bool(v)) for v in values]


def test_a_drift_alarm_boosts_the_learner(tmp_path, world):
    """The alarm acts on the learner only: whether live rolls back is the guard's paired test
    (tests/unit/test_gate_guard.py), whatever the detectors say."""
    gate, registry, events = _adaptive_gate(tmp_path, world)
    _start(gate, world)
    gate.submit(P, world["base"], world["files"], {})  # v2 live
    rng = np.random.default_rng(0)
    stable = scores(2, rng.random(600) < 0.9)
    assert gate.evidence(P, stable)["adapt"] == [] and gate.adaptation(P) is None
    assert gate.evidence(P, scores(1, [0] * 200))["adapt"] == []  # not live: not watched
    changed = scores(2, rng.random(600) < 0.6)
    new = gate.evidence(P, changed)["adapt"]
    assert new and new[0]["actions"] and gate.adaptation(P)["id"] == new[0]["id"]
    adapt = [f for k, f in events if k == "adapt"]
    assert adapt and adapt[0]["action"] == ["learner_boost"] and adapt[0]["signal"] == "correctness"
    assert registry.latest(P, "live").version == 2


def test_without_adapt_the_gate_never_watches_drift(setup, world):
    gate, _, _, events = setup
    _start(gate, world)
    assert gate.evidence(P, scores(1, [0] * 2000))["adapt"] == [] and gate.adaptation(P) is None
    assert gate.group_accuracy(P) == {}


def test_group_accuracy_splits_the_held_out_set_and_reaches_the_decision_events(tmp_path, world):
    gate, _, events = _adaptive_gate(tmp_path, world)
    d = _start(gate, world)
    acc = gate.group_accuracy(P)
    assert set(acc) == {"a", "b"}
    assert min(acc.values()) <= d["heldout_accuracy"] <= max(acc.values())
    decision = next(f for k, f in events if k == "gate_decision")
    assert decision["group_accuracy"] == acc


def _flipped(rows):
    return [(t, 1 - y) for t, y in rows]


def recent(rows, version: int = 1) -> list[dict]:
    """Labeled feedback the joiner held out for the recent slice (answered right: a steady score)."""
    out = []
    for t, y in rows:
        item = feedback(version, text=t, label=y, slice="recent")
        item["row"].update(prediction=y, probs=[0.8, 0.2] if y == 0 else [0.2, 0.8])
        out.append(item)
    return out


def test_the_recent_slice_refuses_a_candidate_that_is_worse_on_the_newest_feedback(tmp_path, world):
    gate, registry, events = _adaptive_gate(tmp_path, world, recent_min=50, recent_size=200)
    _start(gate, world)  # v1: base
    # the newest feedback says the opposite of the held-out labels (concept drift): base is bad at it
    gate.evidence(P, recent(_flipped(world["heldout"][:200])))
    d = gate.submit(P, world["better"], world["files"], {})
    assert d["decision"] == "refuse" and "recent slice" in d["reason"]
    assert d["gate"]["recent"]["n"] == 200 and d["gate"]["recent"]["decision"] == "refuse"
    # the fixed set alone would have promoted it: the same candidate without a recent slice goes live
    registry = PolicyRegistry(tmp_path / "plain" / "registry")
    plain = text_gate(registry, world["heldout"], publisher=FakePublisher(registry))
    _start(plain, world)
    assert plain.submit(P, world["better"], world["files"], {})["decision"] == "promote"
