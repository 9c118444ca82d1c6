"""The wide model family: hashed n-grams, a version that carries its wide weights, online AdaGrad learning."""

from __future__ import annotations

import io

import numpy as np
import pytest
import torch

from core.config.feedback import FeedbackSection
from core.stats.learning_speed import events_to_fraction
from core.models.classifier import ClassifierError, from_version
from core.models.wide import HashedNgrams, WidePart, hash_ngrams
from learners.feedback_source import FeedbackBatch
from learners.objective import WorkerContext
from learners.online import OnlineObjective, OnlineSetup
from tests.unit.test_online_learner import LABELS, _labeled, _rewarded, encoder_files, reviews  # noqa: F401

SMALL = 2**12  # buckets: enough for the 300 test reviews' character bigrams to mostly stay apart


def _wide_objective(files, kind="wide", combine="sum", **fb) -> OnlineObjective:
    torch.manual_seed(0)
    model = {"num_layers": 2, "hidden_size": 64, "num_heads": 2, "intermediate_size": 128, "kind": kind,
             "combine": combine, "wide_buckets": SMALL}
    cfg = FeedbackSection(model=model, learning={"lr": 2e-3, "batch_size": 16, "rehearsal": 0.0, **fb})
    obj = OnlineObjective()
    obj.setup(OnlineSetup(fb=cfg, files=files, labels=LABELS), WorkerContext())
    obj.model.drop.p = 0.0
    return obj


def _accuracy(obj, rows) -> float:
    probs = obj.bundle.predict_proba([t for t, _ in rows])
    return float((probs.argmax(1) == np.array([y for _, y in rows])).mean())


# ---- features ------------------------------------------------------------------------------
def test_ngram_buckets_are_stable_in_range_and_count_every_ngram():
    a = hash_ngrams("这家酒店很好", 1000)
    assert np.array_equal(a, hash_ngrams("这家酒店很好", 1000))  # no per-process salt
    assert len(a) == 6 + 5 and a.min() >= 0 and a.max() < 1000  # 6 characters, 5 bigrams
    assert len(hash_ngrams("ab", 1000, ngram_min=2, ngram_max=3)) == 1
    assert len(hash_ngrams("", 1000)) == 0
    # a unigram and the bigram of the same characters land apart (the order is mixed in)
    assert hash_ngrams("a", 2**40)[0] != hash_ngrams("aa", 2**40, ngram_min=2)[0]


def test_features_are_l2_normalised_bags_with_repeats_counted():
    ids, offsets, values = HashedNgrams(2**20)(["aaa", "", "ab"])
    assert offsets.tolist() == [0, 2, 2]  # "aaa": {a, aa}; "": an empty bag; "ab": {a, b, ab}
    first = values[:2]
    assert torch.isclose((first ** 2).sum(), torch.tensor(1.0)) and first.max() > first.min()  # 3 x a vs 2 x aa
    with pytest.raises(ValueError):
        HashedNgrams(1000, ngram_min=3, ngram_max=2)


def test_config_refuses_an_unknown_kind_and_inverted_ngrams():
    with pytest.raises(ValueError):
        FeedbackSection(model={"kind": "linear"})
    with pytest.raises(ValueError):
        FeedbackSection(model={"wide_ngram_min": 3, "wide_ngram_max": 2})
    assert FeedbackSection().model.kind in ("deep", "wide", "wide_deep")


# ---- a served version carries the wide part ---------------------------------------------------
@pytest.mark.parametrize("kind,combine", [("wide", "sum"), ("wide_deep", "sum"), ("wide_deep", "gate")])
def test_a_version_round_trips_with_its_wide_weights(encoder_files, reviews, kind, combine):
    obj = _wide_objective(encoder_files, kind, combine)
    for _ in range(3):
        obj.step(_labeled(reviews[:8] + reviews[-8:]))
    exported = obj.export_policy()
    assert any(k.startswith("wide.") for k in exported.weights) and "wide.json" in exported.files
    again = from_version({k: v.numpy() for k, v in exported.weights.items()}, exported.files)
    texts = [t for t, _ in reviews[100:140]]
    assert again.wide.kind == kind and again.wide.combine == combine
    np.testing.assert_allclose(again.predict_proba(texts), obj.bundle.predict_proba(texts), atol=1e-5)
    no_wide = {k: v for k, v in exported.files.items() if k != "wide.json"}
    with pytest.raises(ClassifierError):  # wide weights without their spec: not silently dropped
        from_version({k: v.numpy() for k, v in exported.weights.items()}, no_wide)


def test_kind_wide_answers_without_running_the_encoder(encoder_files, reviews):
    obj = _wide_objective(encoder_files, "wide")
    obj.step(_labeled(reviews[:8] + reviews[-8:]))

    def refuse(*args, **kwargs):
        raise AssertionError("the encoder ran")

    obj.bundle.model.forward = refuse
    obj.step(_labeled(reviews[8:16] + reviews[-16:-8]))
    assert obj.bundle.predict_proba(["很好"]).shape == (1, 2)


# ---- learning ----------------------------------------------------------------------------------
def test_the_wide_model_learns_held_out_reviews_from_one_pass_of_labels(encoder_files, reviews):
    obj = _wide_objective(encoder_files, "wide")
    train = reviews[:120] + reviews[150:270]
    held = reviews[120:150] + reviews[270:]
    before = _accuracy(obj, held)
    order = np.random.default_rng(0).permutation(len(train))
    for start in range(0, len(order), 16):
        obj.step(_labeled([train[i] for i in order[start:start + 16]]))
    after = _accuracy(obj, held)
    assert after >= before + 0.2, (before, after)  # one pass; zero weights answer one class for all


def test_reward_only_rows_teach_the_wide_model_by_the_importance_weighted_gradient(encoder_files, reviews):
    obj = _wide_objective(encoder_files, "wide", reward_as_label=False)
    good = [t for t, _ in reviews[:8]]  # served class 0, the user said "right"
    bad = [t for t, _ in reviews[-8:]]  # served class 0, the user said "wrong"
    p_good, p_bad = obj.bundle.predict_proba(good)[:, 0].mean(), obj.bundle.predict_proba(bad)[:, 0].mean()
    for _ in range(10):
        m = obj.step(FeedbackBatch.concat([_rewarded(good, 0, 1.0), _rewarded(bad, 0, 0.0)]))
    assert m["reward_rows"] == 16 and m["labeled_rows"] == 0
    assert obj.bundle.predict_proba(good)[:, 0].mean() > p_good + 0.1
    assert obj.bundle.predict_proba(bad)[:, 0].mean() < p_bad - 0.1


def test_wide_deep_sum_trains_both_parts_and_gate_trains_its_mixing(encoder_files, reviews):
    batch = _labeled(reviews[:8] + reviews[-8:])
    summed = _wide_objective(encoder_files, "wide_deep", "sum")
    deep_before = {k: v.clone() for k, v in summed.model.state_dict().items()}
    summed.step(batch)
    assert any(not torch.equal(deep_before[k], v) for k, v in summed.model.state_dict().items())
    assert summed.bundle.wide.linear.weight.weight.abs().sum() > 0
    assert summed.bundle.wide.mix.tolist() == [1.0, 1.0, 0.0]  # sum: no mixing figures learned
    gated = _wide_objective(encoder_files, "wide_deep", "gate")
    gated.step(batch)
    assert gated.bundle.wide.mix.tolist() != [0.0, 1.0, 0.0]  # the gate starts as the wide part alone


def test_a_checkpoint_restores_the_wide_weights_and_adagrad_state(encoder_files, reviews):
    obj = _wide_objective(encoder_files, "wide")
    for _ in range(3):
        obj.step(_labeled(reviews[:8] + reviews[-8:]))
    buf = io.BytesIO()
    torch.save(obj.state_dict(), buf)  # as the train loop's checkpoints do
    buf.seek(0)
    other = _wide_objective(encoder_files, "wide")
    other.load_state_dict(torch.load(buf, weights_only=True))
    batch = _labeled(reviews[20:28] + reviews[-28:-20])
    obj.step(batch)
    other.step(batch)  # the same step only if AdaGrad's accumulated squares came back too
    torch.testing.assert_close(other.bundle.wide.linear.weight.weight, obj.bundle.wide.linear.weight.weight)


# ---- learning speed ------------------------------------------------------------------------------
def test_events_to_95pct_is_the_first_curve_point_at_95_percent_of_the_final_value():
    curve = [{"events": 0, "heldout_accuracy": 0.5}, {"events": 400, "heldout_accuracy": 0.7},
             {"events": 900, "heldout_accuracy": 0.78}, {"events": 3000, "heldout_accuracy": 0.8}]
    assert events_to_fraction(curve, 0.8) == 900  # 0.95 * 0.8 = 0.76
    assert events_to_fraction(curve, 0.8, fraction=0.5) == 0
    assert events_to_fraction(curve, None) is None
    assert events_to_fraction(curve, 0.99) is None  # never reached
    assert events_to_fraction([{"events": None, "heldout_accuracy": 0.5}], 0.5) == 0  # the start: none learned yet


def test_a_fresh_gate_serves_the_wide_part_alone():
    from core.models.wide import WidePart

    part = WidePart(2, "wide_deep", "gate", buckets=64)
    deep, wide = torch.tensor([[3.0, -3.0]]), torch.tensor([[0.2, 0.1]])
    assert torch.equal(part.combined(deep, wide), wide)  # a fresh encoder head adds nothing until it earns weight
    assert torch.equal(WidePart(2, "wide_deep", "sum", buckets=64).combined(deep, wide), deep + wide)


def test_a_catch_up_batch_trains_the_wide_part_on_every_row_and_the_encoder_on_the_newest(encoder_files, reviews):
    obj = _wide_objective(encoder_files, "wide_deep", "gate")  # batch_size 16, no rehearsal: 16 fresh rows
    batch = _labeled(reviews[:48])
    m = obj.step(batch)
    assert m["fresh_rows"] == 48 and m["wide_only_rows"] == 32 and m["samples"] == 16  # the encoder: 16 rows
    features = obj.bundle.wide.features
    newest = {int(b) for t, _ in reviews[32:48] for b in features.buckets_of(t)}
    only_older = sorted({int(b) for t, _ in reviews[:32] for b in features.buckets_of(t)} - newest)
    weights = obj.bundle.wide.linear.weight.weight.detach()
    assert only_older and bool((weights[only_older].abs().sum(1) > 0).all())  # the skipped rows taught the wide part
    assert obj.total.fresh == 48 and obj.total.rows == 48  # the candidate's data window counts every row

    summed = _wide_objective(encoder_files, "wide_deep", "sum")  # one joint loss: no row can skip the encoder
    m = summed.step(_labeled(reviews[:48]))
    assert m["wide_only_rows"] == 0 and m["samples"] == 48
    assert FeedbackSection(model={"kind": "wide_deep", "combine": "gate"}).catch_up_batches() == 8
    assert FeedbackSection(model={"kind": "wide_deep", "combine": "sum"}).catch_up_batches() == 1
    assert FeedbackSection(model={"kind": "deep"}).catch_up_batches() == 1
