"""Novelty without Ray: the autoencoder objective learns a stream, publishes a calibrated version,
a replica's follower scores new texts with it, and the gate's input detectors read the stream."""

import json

import numpy as np
import pytest
import torch

from core.config.adapt import AdaptSection
from core.models.novelty import Autoencoder, auroc, calibrate, scorer_from_version
from core.config.novelty import NoveltySection
from core.storage.registry import PolicyRegistry
from core.models.classifier import from_encoder
from core.models.tokenizer import tokenizer_files, train_wordpiece
from learners.autoencoder import AutoencoderObjective, AutoencoderSetup
from learners.objective import WorkerContext
from gate.adaptation import FeedbackAdaptation
from serving.feedback_app import Served, classify
from serving.novelty import NoveltyFollower

FAMILIAR = ["房间很干净服务很好", "酒店位置不错早餐一般", "前台服务热情房间安静", "床很舒服但是隔音差"]
STRANGE = ["电池续航时间太短了", "键盘手感不错屏幕清晰", "这本书的作者写得真好", "内存太小运行很卡顿"]


def _classifier(seed: int = 0):
    tok = train_wordpiece((FAMILIAR + STRANGE) * 20, vocab_size=120, min_frequency=1)
    config = {"vocab_size": len(tok), "hidden_size": 32, "num_hidden_layers": 1, "num_attention_heads": 2,
              "intermediate_size": 64, "max_position_embeddings": 32, "pad_token_id": tok.pad_token_id}
    return from_encoder(None, {**tokenizer_files(tok), "config.json": json.dumps(config).encode()},
                        ["neg", "pos"], seed=seed)


def _stream(rng: np.random.Generator, texts: list[str], n: int) -> list[str]:
    # variations of the familiar sentences: a shuffled half of each, so no two batches repeat
    out = []
    for _ in range(n):
        t = texts[int(rng.integers(len(texts)))]
        cut = int(rng.integers(2, len(t)))
        out.append(t[:cut] + t[cut:][::-1] if rng.random() < 0.5 else t)
    return out


def test_running_standardisation_matches_numpy():
    ae = Autoencoder(3, 8, 2)
    x = np.random.default_rng(0).normal(2.0, 3.0, size=(50, 3)).astype(np.float32)
    for chunk in (x[:7], x[7:30], x[30:]):
        ae.observe(torch.from_numpy(chunk))
    assert np.allclose(ae.mean.numpy(), x.mean(0), atol=1e-4)
    assert np.allclose(ae.var.numpy(), x.var(0), rtol=1e-3)


def test_auroc_against_hand_computed_values():
    assert auroc(np.array([0.0, 1.0]), np.array([2.0, 3.0])) == 1.0
    assert auroc(np.array([2.0, 3.0]), np.array([0.0, 1.0])) == 0.0
    assert auroc(np.array([1.0, 2.0]), np.array([1.0, 3.0])) == pytest.approx(0.625)  # 2.5 of 4 pairs


def test_calibrated_percentiles_are_uniform_on_the_calibration_distribution():
    rng = np.random.default_rng(1)
    ae = Autoencoder(4, 8, 2)
    scorer = calibrate(ae, rng.normal(size=(2000, 4)).astype(np.float32), {"policy_id": "p", "version": 1})
    fresh = scorer.percentiles(rng.normal(size=(2000, 4)).astype(np.float32))
    assert 45 < fresh.mean() < 55 and fresh.min() >= 0 and fresh.max() <= 100
    rebuilt = scorer_from_version(scorer.weights(), scorer.files())
    assert rebuilt.pooling == "cls"
    meta = json.loads(scorer.files()["novelty.json"])
    del meta["pooling"]  # a version written before the [CLS] features read the token mean
    assert scorer_from_version(scorer.weights(), {"novelty.json": json.dumps(meta).encode()}).pooling == "mean"
    assert np.allclose(rebuilt.percentiles(rng.normal(size=(5, 4)).astype(np.float32) * 5), 100.0)


@pytest.mark.parametrize("pooling", ["cls", "mean"])
def test_objective_publishes_a_version_a_replica_scores_with(tmp_path, pooling):
    registry = PolicyRegistry(tmp_path / "registry")
    ref = _classifier()
    v1 = registry.publish("sentiment", ref.weights(), files=ref.files())
    cfg = NoveltySection(watch="sentiment", batch_size=16, calibration_every=4, min_calibration=40, calibration_size=200,
                        pooling=pooling)
    setup = AutoencoderSetup(cfg=cfg, registry_uri=registry.uri, reference={"policy_id": "sentiment", "version": v1},
                             weights=ref.weights(), files=ref.files())
    objective = AutoencoderObjective()
    objective.setup(setup, WorkerContext())
    assert "novelty_version" not in objective.evaluate()  # nothing held back yet: nothing to publish
    rng = np.random.default_rng(0)
    losses = [objective.step(_stream(rng, FAMILIAR, 16)).get("loss") for _ in range(240)]
    losses = [x for x in losses if x is not None]
    assert np.mean(losses[-20:]) < 0.5 * np.mean(losses[:5])
    figures = objective.evaluate()
    assert figures["novelty_version"] == 1 and registry.latest("sentiment-novelty", "live").version == 1

    follower = NoveltyFollower(registry.uri, "sentiment-novelty")
    assert follower.score(["x"]) == [None]  # before the first refresh
    assert follower.refresh() == 1 and follower.current.scorer.pooling == pooling
    familiar = np.array(follower.score(_stream(rng, FAMILIAR, 200)))
    strange = np.array(follower.score(STRANGE * 50))
    assert familiar.mean() < 70 and strange.mean() > 90, (familiar.mean(), strange.mean())
    preds, events = classify(Served(_classifier(seed=3), 2), STRANGE[:2], "sentiment", "r", follower)
    assert all(p["novelty"] is not None and p["novelty"] == e["novelty"] for p, e in zip(preds, events))


def test_input_detectors_alarm_on_novelty_and_only_watch_the_label_mix():
    adapt = FeedbackAdaptation(AdaptSection(enabled=True, cooldown_events=0))
    rng = np.random.default_rng(0)
    calm = [(1, float(rng.uniform(0, 100)), int(rng.random() < 0.5)) for _ in range(2000)]
    assert adapt.observe_inputs(1, calm) == []
    novel = [(1, float(rng.uniform(85, 100)), int(rng.random() < 0.5)) for _ in range(300)]
    decisions = adapt.observe_inputs(1, novel)
    assert decisions and decisions[0]["signal"] == "novelty" and decisions[0]["actions"]
    skewed = [(1, float(rng.uniform(0, 100)), int(rng.random() < 0.05)) for _ in range(600)]
    mix = [d for d in adapt.observe_inputs(1, skewed) if d["signal"] == "label_mix"]
    assert mix and not mix[0]["actions"] and "watched only" in mix[0]["suppressed"]
