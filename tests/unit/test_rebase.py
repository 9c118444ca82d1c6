"""Re-basing a classifier onto the encoders an MLM loop of the run publishes, without a cluster:
the MLM side publishes only a better encoder, the learner takes a newer one at a polling update
(fresh head, a gated wide part back to the wide answers), refuses one with another tokenizer,
says which encoder each candidate is on, and keeps it across a resume; the summary groups the
gate's decisions by encoder; the config names an mlm loop listed before the classifier."""

from __future__ import annotations

import json
from types import SimpleNamespace

import numpy as np
import pytest
import torch
from transformers import BertConfig

from cluster.loops.rebase import encoder_decisions
from core.config.feedback import FeedbackSection
from core.config.loader import load_config
from core.data.labeled import sentiment_reviews
from core.models.classifier import from_encoder
from core.models.classifier_start import own_encoder
from core.models.tokenizer import tokenizer_files, train_wordpiece
from core.storage.registry import PolicyRegistry
from learners.encoder_publish import EncoderPublisher, InterimPublish
from learners.feedback_source import FeedbackBatch
from learners.objective import ExportedPolicy, WorkerContext
from learners.online import OnlineObjective, OnlineSetup
from learners.rebase import EncoderFeed, Rebaser, mismatch

LABELS = ["neg", "pos"]
POLICY = "sentiment-encoder"


@pytest.fixture(scope="module")
def reviews() -> list[tuple[str, int]]:
    rows = sentiment_reviews()
    return rows[:100] + rows[-100:]


def _files(texts, vocab=300, hidden=32) -> dict[str, bytes]:
    tok = train_wordpiece(texts, vocab_size=vocab, min_frequency=1)
    cfg = BertConfig(vocab_size=len(tok), hidden_size=hidden, num_hidden_layers=1, num_attention_heads=2,
                     intermediate_size=64, max_position_embeddings=64, hidden_dropout_prob=0.0,
                     attention_probs_dropout_prob=0.0, pad_token_id=tok.pad_token_id)
    return {**tokenizer_files(tok), "config.json": json.dumps(cfg.to_dict()).encode()}


@pytest.fixture(scope="module")
def files(reviews) -> dict[str, bytes]:
    return _files([t for t, _ in reviews])


def _encoder(files, seed: int) -> dict[str, torch.Tensor]:
    """An encoder of the files' shape (what an MLM learner's export holds)."""
    return {k: v.detach().clone() for k, v in from_encoder(None, files, LABELS, seed=seed).model.bert.state_dict().items()}


def _publish(registry: PolicyRegistry, files, seed: int, acc: float) -> int:
    return registry.publish(POLICY, _encoder(files, seed), {"metrics": {"masked_accuracy": acc}}, files=files)


def _objective(files, registry, kind="wide_deep", **learning) -> OnlineObjective:
    torch.manual_seed(0)
    fb = FeedbackSection(policy_id="sentiment", model={"kind": kind, "wide_buckets": 4096},
                         learning={"batch_size": 8, "rehearsal": 0.0, "candidate_every": 2, **learning})
    obj = OnlineObjective()
    feed = EncoderFeed(registry.uri, POLICY, version=None, poll_every=2)
    obj.setup(OnlineSetup(fb=fb, files=files, labels=LABELS, encoders=feed), WorkerContext())
    return obj


def _batch(rows) -> FeedbackBatch:
    n = len(rows)
    return FeedbackBatch.from_rows([t for t, _ in rows], [0] * n, [0.5] * n, label=[y for _, y in rows],
                                   created_at=list(range(n)), policy_version=[1] * n)


# ---- the MLM side ------------------------------------------------------------------------------
def test_the_mlm_learner_publishes_an_encoder_only_when_it_beats_its_start_or_the_last_by_min_gain(tmp_path, files):
    publisher = EncoderPublisher(InterimPublish(str(tmp_path / "registry"), POLICY, min_gain=0.01, info={"loop": "m"}))
    export = lambda: ExportedPolicy(weights=_encoder(files, 1), files=files, info={"corpus": "x"})  # noqa: E731
    accs = [0.0, 0.10, 0.105, 0.12, float("nan"), 0.119, 0.2]  # the first: where the learner starts
    got = [publisher.offer({"masked_accuracy": acc}, export, i) for i, acc in enumerate(accs)]
    assert got == [None, 1, None, 2, None, None, 3]
    registry = PolicyRegistry(tmp_path / "registry")
    v3 = registry.get(POLICY, 3)
    assert v3.parent_version == 2 and v3.metrics["masked_accuracy"] == pytest.approx(0.2)
    assert v3.info["interim"] is True and v3.info["loop"] == "m" and v3.data_range == {"evaluations": 6}


# ---- the learner -------------------------------------------------------------------------------
def test_the_learner_rebases_onto_a_newer_encoder_at_a_polling_update(tmp_path, files, reviews):
    registry = PolicyRegistry(tmp_path / "registry")
    obj = _objective(files, registry)
    batch = _batch(reviews[:4] + reviews[-4:])
    for _ in range(4):
        m = obj.step(batch)
    assert m["encoder_version"] == 0 and m["rebases"] == 0 and obj.bundle.wide.mix[0].item() != 0.0  # learned a_deep
    version = _publish(registry, files, seed=7, acc=0.3)
    obj.step(batch)  # update 5: not a polling update
    assert obj.rebaser.version is None
    obj.step(batch)  # update 6: it looks, and takes v1
    m = obj.step(batch)
    assert obj.rebaser.version == version and m["encoder_version"] == version and m["rebases"] == 1
    published = _encoder(files, seed=7)
    # the encoder is the published one (moved by one step since), the deep weight starts again from 0
    drift = max(float((obj.model.bert.state_dict()[k] - v).abs().max()) for k, v in published.items())
    assert drift < 0.05
    assert abs(obj.bundle.wide.mix[0].item()) < 0.05
    assert obj.metadata()["info"]["encoder_version"] == version
    state = obj.state_dict()
    again = _objective(files, registry)
    again.load_state_dict(state)
    assert again.rebaser.version == version and again.rebaser.rebases == 1


def test_an_encoder_with_another_tokenizer_is_refused_with_the_reason(tmp_path, files, reviews):
    registry = PolicyRegistry(tmp_path / "registry")
    other = _files([t for t, _ in reviews[:50]], vocab=120)
    registry.publish(POLICY, _encoder(other, 3), {}, files=other)
    obj = _objective(files, registry)
    before = {k: v.clone() for k, v in obj.model.bert.state_dict().items()}
    for _ in range(4):
        obj.step(_batch(reviews[:4] + reviews[-4:]))
    assert obj.rebaser.version is None and obj.rebaser.refused == {1: "its tokenizer differs from the classifier's"}
    assert obj.model.bert.state_dict()["embeddings.word_embeddings.weight"].shape == \
        before["embeddings.word_embeddings.weight"].shape


def test_a_shape_that_differs_is_named(files):
    wider = {**files, "config.json": json.dumps({**json.loads(files["config.json"]), "hidden_size": 64}).encode()}
    assert mismatch(files, wider) == "its shape differs from the classifier's encoder (hidden_size)"
    assert mismatch(files, dict(files)) is None


def test_a_rebaser_looks_only_every_poll_every_updates(tmp_path, files):
    registry = PolicyRegistry(tmp_path / "registry")
    _publish(registry, files, seed=1, acc=0.2)
    rebaser = Rebaser(EncoderFeed(registry.uri, POLICY, version=None, poll_every=5), files)
    assert [rebaser.newer(u) for u in (1, 4, 5)] == [None, None, 1]
    rebaser.took(1)
    assert rebaser.newer(10) is None  # nothing newer


# ---- the summary -------------------------------------------------------------------------------
def test_the_summary_groups_the_gate_decisions_by_the_encoder_each_candidate_was_on(tmp_path):
    registry = PolicyRegistry(tmp_path / "registry")
    w = {"w": np.ones(2, dtype=np.float32)}
    for enc in (None, None, 2, 2, 2):
        registry.publish("sentiment", w, {"info": {"encoder_version": enc} if enc else {}})
    decisions = [{"version": 1, "decision": "initial", "heldout_accuracy": 0.5},
                 {"version": 2, "decision": "promote", "heldout_accuracy": 0.6},
                 {"version": 3, "decision": "refuse", "heldout_accuracy": 0.55},
                 {"version": 4, "decision": "promote", "heldout_accuracy": 0.7},
                 {"version": 5, "decision": "refuse", "heldout_accuracy": 0.65}]
    out = encoder_decisions(registry, "sentiment", decisions, [{"version": 2, "updates": 40, "masked_accuracy": 0.3}])
    assert [(e["encoder_version"], e["promoted"], e["refused"], e["best_promoted_accuracy"]) for e in out] == \
        [(0, 2, 0, 0.6), (2, 1, 2, 0.7)]
    assert out[1]["rebased_at_update"] == 40 and [d["version"] for d in out[1]["decisions"]] == [3, 4, 5]


# ---- the config --------------------------------------------------------------------------------
def test_encoder_loop_names_an_mlm_loop_listed_before_the_classifier():
    base = ["loops={m: {kind: mlm}, s: {kind: feedback, model: {kind: wide_deep, encoder_loop: m}}}"]
    assert load_config(None, base).loops["s"].model.encoder_loop == "m"
    for loops, fragment in [
        ("{s: {kind: feedback, model: {encoder_loop: m}}, m: {kind: mlm}}", "list 'm' before it"),
        ("{s: {kind: feedback, model: {encoder_loop: nope}}}", "must name an mlm loop of this run"),
        ("{m: {kind: mlm}, s: {kind: feedback, model: {kind: wide, encoder_loop: m}}}", "never runs its encoder"),
    ]:
        with pytest.raises(Exception) as info:
            load_config(None, [f"loops={loops}"])
        assert fragment in str(info.value)


def test_a_classifier_with_an_encoder_of_its_own_keeps_it(tmp_path, files):
    fb = FeedbackSection(model={"encoder_registry": str(tmp_path / "none"), "encoder_loop": "m"})
    assert own_encoder(fb) is None
    registry = PolicyRegistry(tmp_path / "reg")
    registry.publish("encoder", _encoder(files, 0), {}, files=files)
    fb = FeedbackSection(model={"encoder_registry": str(tmp_path / "reg"), "encoder_loop": "m"})
    assert own_encoder(fb) == f"encoder 'encoder' in {tmp_path / 'reg'}"
    assert own_encoder(FeedbackSection(model={"pretrained_dir": "/x"})) == "the checkpoint /x"


def test_the_pretraining_loop_stands_down_when_every_classifier_it_serves_has_an_encoder(tmp_path, files):
    from cluster.loops.mlm import MLMLoop

    registry = PolicyRegistry(tmp_path / "reg")
    registry.publish("encoder", _encoder(files, 0), {}, files=files)
    cfg = load_config("configs/sentiment.yaml", [f"loops.sentiment.model.encoder_registry={tmp_path / 'reg'}"])
    said: list[str] = []
    ctx = SimpleNamespace(say=said.append, cfg=cfg)
    loop = MLMLoop(cfg, ctx, "sentiment_mlm")
    loop.prepare()  # before any corpus is read
    assert loop.stood_down and loop.done() and loop.summary() == {"stood_down": loop.stood_down}
    assert said == ["evolve: sentiment_mlm: stands down: every classifier it pretrains for (sentiment) "
                    "has an encoder of its own"]
