"""Poisoned feedback end to end, without a cluster.

Acceptance: "feedback from one client with flipped labels poisons a candidate; the gate
refuses it and the live version stays."

    v1 (a classifier trained on clean reviews) --bootstrap--> Gate (text kind, registry in tmp_path)
    TrafficWorker(poison) --HTTP (httpx.MockTransport)--> predict: serving.feedback_app.classify(v1)
                                                          feedback: serving.join.EventJoin -> feedback rows
    rows --to_record_batch(feedback schema)--> feedback_to_batch --> OnlineObjective (from v1's weights)
    OnlineObjective candidate --submit.remote--> the real Gate --> refuse; v1 stays live

The flipped labels come from the traffic worker's poison mode, never from the test; the
control runs the same pipeline with an honest client and its candidate goes live.
"""

from __future__ import annotations

import json
import threading
from types import SimpleNamespace

import httpx
import numpy as np
import pytest
import torch
from transformers import BertConfig

from actors.traffic import TrafficWorker
from core.config.feedback import FeedbackSection, GateSection, TrafficSection
from core.data.labeled import sentiment_reviews
from core.storage.registry import PolicyRegistry
from core.data.schemas import feedback_schema, to_record_batch
from core.models.classifier import from_encoder, from_version
from core.models.tokenizer import SPECIAL_TOKENS, tokenizer_files, train_wordpiece
from learners.feedback_source import FeedbackBatch, feedback_to_batch
from learners.objective import WorkerContext
from learners.online import OnlineObjective, OnlineSetup
from serving.feedback_app import Served, classify
from gate import Gate
from gate.kinds.text import correct
from serving.join import EventJoin, FeedbackRejected, to_columns
from tests.unit.test_gate import FakePublisher, _train, text_gate

P = "sentiment"
LABELS = ["neg", "pos"]
CFG = GateSection(test="mcnemar", tolerance=0.01, alpha=0.05)
PASSES = 3  # the client cycles its texts (a live stream): every pass is new predictions and new feedback
BATCH = 16
UPDATES = 160 * PASSES // BATCH  # each joined feedback row learned from once, as a fifo feedback table hands it out
LR = 1e-3


def _tokenizer_files(texts: list[str]) -> dict[str, bytes]:
    """`train_wordpiece`'s files with token ids fixed by the vocabulary alone.

    The trainer adds the "##" continuation alphabet in hash-map order, so those ids (and with
    them a seeded model's embeddings) change from process to process.  Below the alphabet's size
    it merges nothing, so the token set is fixed; sorting it (special tokens keep their ids)
    makes the ids fixed too.
    """
    files = tokenizer_files(train_wordpiece(texts, vocab_size=100, min_frequency=2))
    spec = json.loads(files["tokenizer.json"])
    vocab = spec["model"]["vocab"]
    special = sorted(SPECIAL_TOKENS, key=vocab.__getitem__)
    assert [vocab[t] for t in special] == list(range(len(special)))
    spec["model"]["vocab"] = {t: i for i, t in enumerate(special + sorted(set(vocab) - set(special)))}
    return {**files, "tokenizer.json": json.dumps(spec, ensure_ascii=False).encode()}


@pytest.fixture(scope="module")
def world():
    """A live model v1 trained on clean reviews, the gate's held-out set, and the client's traffic rows."""
    torch.set_num_threads(1)
    rows = sentiment_reviews()
    pick = np.random.default_rng(0).permutation(len(rows))
    train = [rows[i] for i in pick[:1000]]
    heldout = [rows[i] for i in pick[1000:1200]]
    traffic = [rows[i] for i in pick[1200:1360]]  # never held out: the gate judges on texts nobody sent
    assert not {t for t, _ in traffic} & {t for t, _ in heldout}
    tok_files = _tokenizer_files([t for t, _ in train])
    vocab_size = len(json.loads(tok_files["tokenizer.json"])["model"]["vocab"])
    config = BertConfig(vocab_size=vocab_size, hidden_size=64, num_hidden_layers=2, num_attention_heads=2,
                        intermediate_size=128, max_position_embeddings=64, hidden_dropout_prob=0.0,
                        attention_probs_dropout_prob=0.0)
    enc_files = {**tok_files, "config.json": json.dumps(config.to_dict(), default=str).encode()}
    live = from_encoder(None, enc_files, LABELS, max_len=32, seed=0)
    _train(live, train, steps=150, seed=0)  # well above chance on the held-out rows
    weights = {k: v.numpy().copy() for k, v in live.weights().items()}
    return {"heldout": heldout, "traffic": traffic, "files": live.files(), "v1": weights}


class InProcessServe:
    """The two endpoints a client talks to, in process: /v1/predict answers with the live version
    through `serving.feedback_app.classify`, /v1/feedback is joined by `serving.join.EventJoin`;
    `rows` are what the replay feedback table would get."""

    def __init__(self, weights, files, version: int):
        self.served = Served(from_version(weights, files), version)
        self.join = EventJoin(feedback_ttl_s=600.0, text_table=None)
        self.rows: list[dict] = []
        self.lock = threading.Lock()
        self.transport = httpx.MockTransport(self.handle)

    def handle(self, request: httpx.Request) -> httpx.Response:
        body = json.loads(request.content)
        with self.lock:
            if request.url.path == "/v1/predict":
                texts = body["texts"] if "texts" in body else [body["text"]]
                preds, events = classify(self.served, texts, P, "replica-0")
                self.join.record(events)
                return httpx.Response(200, json={"predictions": preds} if "texts" in body else preds[0])
            if request.url.path == "/v1/feedback":
                try:
                    answer, row = self.join.join(body["event_id"], body.get("label"), body.get("reward"))
                except FeedbackRejected as exc:
                    return httpx.Response(exc.status, json={"detail": exc.detail})
                if row is not None:
                    self.rows.append(row)
                return httpx.Response(200, json=answer)
        return httpx.Response(404)


def _client_feedback(world, poison: bool) -> tuple[FeedbackBatch, dict]:
    """One traffic client sends its texts to v1 (PASSES times) and gives feedback on every answer;
    the joined rows as the online learner reads them from the feedback table."""
    server = InProcessServe(world["v1"], world["files"], version=1)
    # one request at a time: the rows arrive in a fixed order (p_label 1.0: every feedback names a label)
    cfg = TrafficSection(concurrency=1, batch_size=16, p_label=1.0, feedback_delay_s=(0.0, 0.0))
    worker = TrafficWorker("http://evolve.test", world["traffic"] * PASSES, LABELS, cfg, actor_id="traffic-0",
                           seed=1, repeat=False, transport=server.transport)
    worker.set_poison(poison)
    worker.run(timeout_s=120)
    stats = worker.stats()
    worker.close()
    batch = feedback_to_batch(to_record_batch("feedback", feedback_schema(), to_columns(server.rows)))
    return batch, stats


class GateHandle:
    """The gate handle's shape the learner calls (`submit.remote(policy_id, weights, files, metadata)`),
    answered at once by a real Gate."""

    def __init__(self, gate: Gate):
        self.gate, self.decisions, self.weights = gate, [], []
        self.submit = SimpleNamespace(remote=self._submit)

    def _submit(self, policy_id, weights, files, metadata):
        self.weights.append(weights)
        decision = self.gate.submit(policy_id, weights, files, metadata)
        self.decisions.append(decision)
        return decision


def _learn(world, batch: FeedbackBatch, handle: GateHandle) -> OnlineObjective:
    """The online learner, resumed from v1, trained on `batch` only until it hands over one candidate."""
    torch.manual_seed(0)
    fb = FeedbackSection(policy_id=P, learning={"lr": LR, "batch_size": BATCH, "rehearsal": 0.0, "candidate_every": UPDATES,
                                                    "first_candidate": UPDATES})
    obj = OnlineObjective()
    obj.setup(OnlineSetup(fb=fb, files=world["files"], weights=world["v1"], labels=LABELS, parent_version=1,
                          gate=handle, seed=0), WorkerContext())
    assert len(batch) == UPDATES * BATCH
    for i in range(UPDATES):
        assert obj.step(batch.take(np.arange(i * BATCH, (i + 1) * BATCH)))["updates"] == 1
    return obj


def _pipeline(tmp_path, world, poison: bool):
    registry = PolicyRegistry(tmp_path / "registry")
    publisher = FakePublisher(registry)
    events: list[tuple[str, dict]] = []
    gate = text_gate(registry, world["heldout"], CFG, publisher=publisher,
                     emit=lambda kind, **fields: events.append((kind, fields)))
    start = gate.bootstrap(P, weights=world["v1"], files=world["files"], metadata={"info": {"source": "test"}})
    assert start["decision"] == "initial" and start["version"] == 1 and registry.latest(P, "live").version == 1
    batch, stats = _client_feedback(world, poison)
    handle = GateHandle(gate)
    obj = _learn(world, batch, handle)
    return SimpleNamespace(registry=registry, publisher=publisher, events=events, gate=gate, start=start,
                           batch=batch, stats=stats, handle=handle, obj=obj)


def _accuracy(weights, world) -> float:
    return float(correct(from_version(weights, world["files"]), world["heldout"]).mean())


def test_one_poisoning_client_gets_its_candidate_refused_and_v1_stays_live(tmp_path, world):
    run = _pipeline(tmp_path, world, poison=True)
    live_acc = run.start["heldout_accuracy"]
    assert live_acc > 0.6  # a live model worth protecting

    # the client's feedback: every row joined, every label the opposite of the truth (poison mode)
    truth = dict(world["traffic"])
    assert run.stats["poison"] and run.stats["feedbacks"] == PASSES * len(world["traffic"]) == len(run.batch)
    assert run.stats["errors"] == {"predict": {}, "feedback": {}}
    assert (run.batch.label == np.array([1 - truth[t] for t in run.batch.text])).all()
    assert (run.batch.policy_version == 1).all() and np.isfinite(run.batch.logged_p).all()

    # the learner, trained on that feedback alone, handed the gate exactly one candidate
    assert run.obj.updates == UPDATES and run.obj.candidates == 1 and len(run.handle.decisions) == 1
    decision = run.handle.decisions[0]
    assert decision["events"] == len(run.batch)  # the candidate's lineage: every poisoned row, learned once
    cand_acc = _accuracy(run.handle.weights[0], world)

    # the poisoning worked: the candidate is clearly worse than live on the held-out set ...
    assert decision["heldout_accuracy"] == pytest.approx(cand_acc)
    assert cand_acc < live_acc - 0.15, (cand_acc, live_acc)

    # ... and the gate refused it: stored for the lineage, never live; v1 still serves
    assert decision["decision"] == "refuse" and "worse than live" in decision["reason"]
    assert decision["version"] == 2 and decision["parent"] == 1 and decision["live_version"] == 1
    assert run.registry.latest(P, "live").version == 1
    assert run.registry.versions(P) == [1, 2] and run.registry.stages(P)["live"]["history"] == [1]
    assert [v for v, _ in run.publisher.published] == [1]
    stored = run.registry.get(P, 2)
    assert stored.gate["decision"] == "refuse" and stored.parent_version == 1 and stored.info["objective"] == "online"
    summary = run.gate.summary(P)
    assert summary["live_version"] == 1 and summary["refused"] == 1 and summary["promoted"] == 1
    assert summary["heldout_accuracy"] == live_acc
    assert [(k, f["decision"]) for k, f in run.events] == [("gate_decision", "initial"), ("gate_decision", "refuse")]


def test_the_same_pipeline_with_an_honest_client_goes_live(tmp_path, world):
    run = _pipeline(tmp_path, world, poison=False)
    truth = dict(world["traffic"])
    assert not run.stats["poison"] and len(run.batch) == PASSES * len(world["traffic"])
    assert (run.batch.label == np.array([truth[t] for t in run.batch.text])).all()
    assert run.obj.candidates == 1 and len(run.handle.decisions) == 1
    decision = run.handle.decisions[0]
    assert decision["decision"] == "promote", decision["reason"]  # not worse beyond tolerance
    assert run.registry.latest(P, "live").version == 2 and [v for v, _ in run.publisher.published] == [1, 2]
