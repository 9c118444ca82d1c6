"""The online feedback learner without a cluster: CE and off-policy reward updates, rehearsal,
refusal of non-finite losses, state round trip, candidates the gate can rebuild, DDP agreement."""

from __future__ import annotations

import datetime
import io
import itertools
import json
import math
import os
import time
from types import SimpleNamespace

import numpy as np
import pytest
import torch
from transformers import BertConfig

from core.config.feedback import FeedbackSection
from core.data.labeled import sentiment_reviews
from core.models.classifier import ClassifierError, from_version
from core.models.tokenizer import tokenizer_files, train_wordpiece
from learners.feedback_source import NO_LABEL, FeedbackBatch, Reservoir
from learners.objective import WorkerContext
from learners.feedback_loss import feedback_loss
from learners.online import OnlineObjective, OnlineSetup, split_batch

LABELS = ["neg", "pos"]


@pytest.fixture(scope="module")
def reviews() -> list[tuple[str, int]]:
    rows = sentiment_reviews()
    return rows[:150] + rows[-150:]  # 150 negative, 150 positive


@pytest.fixture(scope="module")
def encoder_files(reviews) -> dict[str, bytes]:
    tok = train_wordpiece([t for t, _ in reviews], vocab_size=300, min_frequency=1)
    cfg = BertConfig(vocab_size=len(tok), hidden_size=64, num_hidden_layers=2, num_attention_heads=2,
                     intermediate_size=128, max_position_embeddings=64, hidden_dropout_prob=0.0,
                     attention_probs_dropout_prob=0.0, pad_token_id=tok.pad_token_id)
    return {**tokenizer_files(tok), "config.json": json.dumps(cfg.to_dict()).encode()}


class FakeGate:
    """The gate handle's shape: submit.remote(policy_id, weights, files, metadata)."""

    def __init__(self) -> None:
        self.calls: list[tuple] = []
        self.submit = SimpleNamespace(remote=lambda *args: self.calls.append(args))


def _objective(files, gate=None, ctx=None, setup_kw=None, **fb) -> OnlineObjective:
    torch.manual_seed(0)
    cfg = FeedbackSection(policy_id="sentiment", learning={"lr": 2e-3, "batch_size": 16, "rehearsal": 0.0, **fb})
    obj = OnlineObjective()
    obj.setup(OnlineSetup(fb=cfg, files=files, labels=LABELS, gate=gate, **(setup_kw or {})), ctx or WorkerContext())
    obj.model.drop.p = 0.0  # deterministic steps in tests
    return obj


def _labeled(rows, t0=0) -> FeedbackBatch:
    n = len(rows)
    return FeedbackBatch.from_rows([t for t, _ in rows], [0] * n, [0.5] * n, label=[y for _, y in rows],
                                   created_at=[t0 + i for i in range(n)], policy_version=[1] * n)


def _rewarded(texts, prediction, reward, logged_p=0.5) -> FeedbackBatch:
    n = len(texts)
    return FeedbackBatch.from_rows(texts, [prediction] * n, [logged_p] * n, reward=[reward] * n)


def _weights(obj) -> dict[str, torch.Tensor]:
    return {k: v.detach().clone() for k, v in obj.model.state_dict().items()}


def _ce(obj, batch: FeedbackBatch) -> float:
    logp = torch.log(torch.from_numpy(obj.bundle.predict_proba(batch.text)))
    return float(-logp[torch.arange(len(batch)), torch.from_numpy(batch.label)].mean())


# ---- learning ---------------------------------------------------------------------------
def test_cross_entropy_decreases_on_a_fixed_labeled_batch(encoder_files, reviews):
    obj = _objective(encoder_files)
    batch = _labeled(reviews[:8] + reviews[-8:])
    before = _ce(obj, batch)
    for _ in range(25):
        m = obj.step(batch)
    after = _ce(obj, batch)
    assert m["updates"] == 1 and m["labeled_rows"] == 16 and m["reward_rows"] == 0
    assert obj.updates == 25 and after < 0.5 * before, (before, after)


def test_reward_only_rows_move_probability_toward_rewarded_and_away_from_unrewarded(encoder_files, reviews):
    obj = _objective(encoder_files, reward_as_label=False)  # the policy gradient itself, not rewards as labels
    good = [t for t, _ in reviews[:8]]  # served class 0, the user said "right"
    bad = [t for t, _ in reviews[-8:]]  # served class 0, the user said "wrong"
    p0 = obj.bundle.predict_proba(good + bad)[:, 0]
    for _ in range(10):
        m = obj.step(FeedbackBatch.concat([_rewarded(good, 0, 1.0), _rewarded(bad, 0, 0.0)]))
    p1 = obj.bundle.predict_proba(good + bad)[:, 0]
    assert m["reward_rows"] == 16 and m["labeled_rows"] == 0 and obj.updates == 10
    assert (p1[:8] > p0[:8]).all() and (p1[8:] < p0[8:]).all()
    assert p1[:8].mean() - p0[:8].mean() > 0.05 and p0[8:].mean() - p1[8:].mean() > 0.05


def test_importance_weights_are_clipped_and_the_loss_is_clipped_ips():
    logits = torch.tensor([[0.0, 0.0], [0.0, 0.0], [2.0, 0.0]], requires_grad=True)
    rows = {
        "label": torch.tensor([NO_LABEL, NO_LABEL, 1]),
        "prediction": torch.tensor([0, 1, 0]),
        "reward": torch.tensor([1.0, 0.0, float("nan")]),
        "logged_p": torch.tensor([1e-4, 1.0, 0.5]),  # row 0: 1/mu huge -> clipped; row 1: pi/mu = 0.5
    }
    loss, parts = feedback_loss(logits, rows, baseline=0.5, pg_weight=2.0, max_importance_weight=3.0)
    assert parts["bandit"].tolist() == [True, True, False] and parts["labeled"].tolist() == [False, False, True]
    assert parts["weight"][:2].tolist() == pytest.approx([3.0, 0.5])
    log_half = math.log(0.5)
    ce = -torch.log_softmax(torch.tensor([2.0, 0.0]), 0)[1].item()
    # row 0: -2 * 3 * (1 - 0.5) * log 0.5; row 1: -2 * 0.5 * (0 - 0.5) * log 0.5; row 2: CE; mean over 3
    expected = (-2 * 3 * 0.5 * log_half + -2 * 0.5 * -0.5 * log_half + ce) / 3
    assert loss.item() == pytest.approx(expected, rel=1e-5)
    loss.backward()
    assert torch.isfinite(logits.grad).all()


def test_on_two_labels_a_right_or_wrong_reward_is_learned_as_the_label_it_names():
    logits = torch.tensor([[1.0, 0.0], [1.0, 0.0], [1.0, 0.0], [1.0, 0.0]], requires_grad=True)
    rows = {"label": torch.tensor([NO_LABEL, NO_LABEL, NO_LABEL, 1]), "prediction": torch.tensor([0, 0, 1, 0]),
            "reward": torch.tensor([1.0, 0.0, 0.7, float("nan")]),  # right, wrong, graded, labeled
            "logged_p": torch.tensor([0.6, 0.6, 0.4, 0.5])}
    loss, parts = feedback_loss(logits, rows, 0.5, 1.0, 10.0, reward_as_label=True)
    assert parts["from_reward"].tolist() == [True, True, False, False]
    assert parts["label"].tolist() == [0, 1, NO_LABEL, 1]  # right: the served class; wrong: the other one
    assert parts["labeled"].tolist() == [True, True, False, True] and parts["bandit"].tolist() == [False, False, True, False]
    logp = torch.log_softmax(torch.tensor([1.0, 0.0]), 0)
    pg = -min(float(logp[1].exp()) / 0.4, 10.0) * (0.7 - 0.5) * float(logp[1])
    assert loss.item() == pytest.approx((-logp[0] - logp[1] + pg - logp[1]).item() / 4, rel=1e-5)
    three = torch.zeros(2, 3)  # on three labels "wrong" does not say which other label is right
    _, parts = feedback_loss(three, {k: v[:2] for k, v in rows.items()}, 0.5, 1.0, 10.0, reward_as_label=True)
    assert not parts["from_reward"].any() and parts["bandit"].all()


def test_the_learner_counts_rows_whose_label_a_reward_named(encoder_files, reviews):
    texts = [t for t, _ in reviews[:8]]
    on = _objective(encoder_files).step(FeedbackBatch.concat([_rewarded(texts, 0, 1.0), _rewarded(texts, 1, 0.0)]))
    assert on["labeled_rows"] == 16 and on["reward_label_rows"] == 16 and on["reward_rows"] == 0
    off = _objective(encoder_files, reward_as_label=False).step(_rewarded(texts, 0, 1.0))
    assert off["reward_rows"] == 8 and off["reward_label_rows"] == 0


def test_unusable_rows_are_ignored_without_nan_gradients():
    logits = torch.zeros(3, 2, requires_grad=True)
    rows = {"label": torch.tensor([NO_LABEL, 5, NO_LABEL]), "prediction": torch.tensor([0, 0, 7]),
            "reward": torch.tensor([float("nan"), float("nan"), 1.0]), "logged_p": torch.tensor([0.5, float("nan"), 0.5])}
    loss, parts = feedback_loss(logits, rows, 0.5, 1.0, 10.0)
    assert not (parts["bandit"] | parts["labeled"]).any() and loss.item() == 0.0
    loss.backward()
    assert (logits.grad == 0).all()


def test_the_baseline_follows_rewards(encoder_files, reviews):
    obj = _objective(encoder_files, baseline_decay=0.5, reward_as_label=False)
    obj.step(_rewarded([t for t, _ in reviews[:4]], 0, 1.0))
    assert obj.baseline == pytest.approx(0.5 * 0.5**4 + 1.0 * (1 - 0.5**4))


# ---- rehearsal ----------------------------------------------------------------------------
def test_rehearsal_share_comes_from_older_feedback(encoder_files, reviews):
    fresh, replay = split_batch(16, 0.25)
    assert (fresh, replay) == (12, 4) and split_batch(8, 0.99) == (1, 7)
    obj = _objective(encoder_files, rehearsal=0.25, reservoir_size=20)
    seen: list[list[str]] = []
    encode = obj.bundle.encode
    obj.bundle.encode = lambda texts: (seen.append(list(texts)), encode(texts))[1]
    batches = [_labeled(reviews[i * 12:(i + 1) * 12]) for i in range(6)]
    for i, b in enumerate(batches):
        m = obj.step(b)
        assert m["fresh_rows"] == 12 and m["rehearsal_rows"] == (0 if i == 0 else 4)
        assert m["samples"] == len(seen[-1])
        older = {t for prev in batches[:i] for t in prev.text}
        assert seen[-1][:12] == b.text and set(seen[-1][12:]) <= older  # replayed rows are older ones
    assert len(obj.reservoir) == 20 and obj.reservoir.seen == 72


def test_reservoir_is_a_uniform_bounded_sample():
    res, rng = Reservoir(200), np.random.default_rng(0)
    for start in range(0, 20_000, 50):
        idx = list(range(start, start + 50))
        res.add(FeedbackBatch.from_rows([str(i) for i in idx], idx, [0.5] * 50), rng)
    kept = res.rows.prediction
    assert len(res) == 200 and res.seen == 20_000 and len(set(kept.tolist())) == 200
    assert [t for t in res.rows.text] == [str(i) for i in kept]  # columns stay aligned
    assert abs(kept.mean() - 10_000) < 1_200  # uniform over everything seen (sd ~ 408)
    assert len(res.sample(50, rng)) == 50 and len(res.sample(500, rng)) == 200


# ---- refusing non-finite steps, idling ----------------------------------------------------
def test_a_nan_loss_is_refused_and_the_weights_stay(encoder_files, reviews):
    gate = FakeGate()
    obj = _objective(encoder_files, gate=gate, candidate_every=1)
    batch = _labeled(reviews[:8])
    before = _weights(obj)
    hook = obj.model.head.register_forward_hook(lambda mod, inp, out: out * float("nan"))
    m = obj.step(batch)
    assert m["updates"] == 0 and m["skipped_nonfinite"] == 1 and obj.updates == 0
    assert all(torch.equal(before[k], v) for k, v in obj.model.state_dict().items())
    assert gate.calls == []
    hook.remove()
    assert obj.step(batch)["updates"] == 1 and len(gate.calls) == 1
    assert all(np.isfinite(w).all() for w in gate.calls[0][1].values())


def test_no_batch_is_an_idle_step(encoder_files):
    obj = _objective(encoder_files)
    before = _weights(obj)
    m = obj.step(None)
    assert m["idle"] == 1 and m["updates"] == 0 and obj.idle == 1
    assert all(torch.equal(before[k], v) for k, v in obj.model.state_dict().items())


# ---- state, candidates, starting points ---------------------------------------------------
def test_state_dict_round_trip(encoder_files, reviews):
    a = _objective(encoder_files, rehearsal=0.5)
    for i in range(4):
        a.step(_labeled(reviews[i * 8:(i + 1) * 8], t0=1_700_000_000_000_000))
        a.step(_rewarded([t for t, _ in reviews[-(i + 1) * 4:][:4]], 1, 0.0))
    buf = io.BytesIO()
    torch.save(a.state_dict(), buf)
    buf.seek(0)
    state = torch.load(buf, weights_only=True)  # as the train loop restores it
    b = _objective(encoder_files, rehearsal=0.5)
    b.load_state_dict(state)
    assert all(torch.equal(v, b.model.state_dict()[k]) for k, v in a.model.state_dict().items())
    assert (b.updates, b.skipped, b.baseline) == (a.updates, a.skipped, a.baseline) and b.updates == 8
    assert b.reservoir.rows.text == a.reservoir.rows.text and b.reservoir.seen == a.reservoir.seen
    np.testing.assert_array_equal(b.reservoir.rows.reward, a.reservoir.rows.reward)
    sa, sb = a.optimizer.state_dict()["state"], b.optimizer.state_dict()["state"]
    assert all(torch.equal(sa[k]["exp_avg"], sb[k]["exp_avg"]) for k in sa)
    assert b.total.to_json() == a.total.to_json() and b.total.rows > 0
    texts = [t for t, _ in reviews[100:110]]
    np.testing.assert_array_equal(a.bundle.predict_proba(texts), b.bundle.predict_proba(texts))


def test_a_candidate_every_k_updates_rebuilds_the_same_model(encoder_files, reviews):
    gate = FakeGate()
    obj = _objective(encoder_files, gate=gate, candidate_every=3, first_candidate=3, setup_kw={"parent_version": 4})
    t0 = 1_700_000_000_000_000
    for i in range(6):
        obj.step(_labeled(reviews[i * 8:(i + 1) * 8], t0=t0 + 100 * i))
    assert len(gate.calls) == 2
    policy_id, weights, files, meta = gate.calls[-1]
    assert policy_id == "sentiment" and set(files) == set(obj.bundle.files())
    assert all(isinstance(w, np.ndarray) and w.dtype == np.float32 for w in weights.values())
    assert meta["updates"] == 6 and meta["parent_version"] == 4 and math.isfinite(meta["metrics"]["train_loss"])
    window = meta["data_range"]["window"]
    assert window["rows"] == 24 and window["labeled_rows"] == 24 and window["updates"] == 3
    assert window["created_at_min"].startswith("2023-11-14T22:13:20.0003")  # rows of steps 4..6
    assert meta["data_range"]["total"]["rows"] == 48 and meta["data_range"]["table"] == "feedback"
    json.dumps(meta)  # goes into the registry's metadata.json
    rebuilt = from_version(weights, files)
    texts = [t for t, _ in reviews[120:140]]
    np.testing.assert_allclose(rebuilt.predict_proba(texts), obj.bundle.predict_proba(texts), atol=1e-6)
    obj.step(_labeled(reviews[60:68]))  # later training does not touch what was handed over
    np.testing.assert_allclose(from_version(weights, files).predict_proba(texts), rebuilt.predict_proba(texts))


def test_start_from_a_classifier_version(encoder_files, reviews):
    a = _objective(encoder_files)
    a.step(_labeled(reviews[:8]))
    files, weights = a.bundle.files(), a.numpy_weights()
    b = OnlineObjective()
    b.setup(OnlineSetup(fb=FeedbackSection(), files=files, weights=weights, labels=LABELS, parent_version=7), WorkerContext())
    texts = [t for t, _ in reviews[50:60]]
    np.testing.assert_allclose(a.bundle.predict_proba(texts), b.bundle.predict_proba(texts), atol=1e-6)
    assert b.export_policy().info["parent_version"] == 7
    with pytest.raises(ClassifierError, match="labels"):
        OnlineObjective().setup(OnlineSetup(fb=FeedbackSection(), files=files, weights=weights, labels=["a", "b"]),
                                WorkerContext())


def test_export_policy_is_the_classifier_version(encoder_files, reviews):
    obj = _objective(encoder_files)
    obj.step(_labeled(reviews[:8]))
    policy = obj.export_policy()
    assert "labels.json" in policy.files and policy.metrics["updates"] == 1.0
    rebuilt = from_version(policy.weights, policy.files)
    texts = [t for t, _ in reviews[:5]]
    np.testing.assert_allclose(rebuilt.predict_proba(texts), obj.bundle.predict_proba(texts), atol=1e-6)


# ---- the replay side ------------------------------------------------------------------------
# ---- DDP: ranks agree on idle and refused steps ------------------------------------------------
def _ddp_worker(rank: int, world: int, port: int, files: dict[str, bytes], texts: list[str], out: str) -> None:
    import torch.distributed as dist
    from torch.nn.parallel import DistributedDataParallel

    torch.set_num_threads(1)
    os.environ.update(MASTER_ADDR="127.0.0.1", MASTER_PORT=str(port))
    # A deadline instead of a hang: a lost peer fails the collective after 120 s.
    dist.init_process_group("gloo", rank=rank, world_size=world, timeout=datetime.timedelta(seconds=120))
    try:
        ctx = WorkerContext(rank=rank, world_size=world, wrap_model=DistributedDataParallel)
        gate = FakeGate() if rank == 0 else None
        obj = _objective(files, gate=gate, ctx=ctx, candidate_every=2)
        mine = texts[rank * 8:(rank + 1) * 8]
        batch = _labeled([(t, i % 2) for i, t in enumerate(mine)], t0=rank * 1000)
        log = [obj.step(None if rank == 1 else batch)["updates"]]  # rank 1 has no data yet: both idle
        log.append(obj.step(batch)["updates"])  # rank 0 trains its held batch, rank 1 its new one
        hook = obj.model.head.register_forward_hook(lambda m, i, o: o * float("nan")) if rank == 1 else None
        log.append(obj.step(batch)["updates"])  # NaN on rank 1 only: both refuse
        if hook is not None:
            hook.remove()
        log.append(obj.step(batch)["updates"])
        flat = torch.cat([p.detach().reshape(-1) for p in obj.model.parameters()])
        meta = gate.calls[-1][3]["data_range"]["window"] if gate and gate.calls else None
        torch.save({"log": log, "flat": flat, "skipped": obj.skipped, "updates": obj.updates, "meta": meta,
                    "calls": len(gate.calls) if gate else 0}, f"{out}/rank{rank}.pt")
    finally:
        dist.destroy_process_group()
    # Skip interpreter teardown: freeing DDP's reducer after the group is gone can deadlock
    # (ProcessGroupGloo's destructor joins a thread that waits for the GIL).
    os._exit(0)


def test_ddp_ranks_agree_on_idle_and_refused_steps(encoder_files, reviews, tmp_path):
    import torch.multiprocessing as mp

    from tests.conftest import free_port

    texts = [t for t, _ in reviews[:8]] + [t for t, _ in reviews[-8:]]
    procs = mp.spawn(_ddp_worker, args=(2, free_port(), encoder_files, texts, str(tmp_path)), nprocs=2, join=False)
    deadline = time.monotonic() + 240  # a deadline, never a hung suite
    while not procs.join(timeout=5):
        if time.monotonic() > deadline:
            for p in procs.processes:
                p.kill()
            pytest.fail("the two DDP workers did not finish within 240 s")
    r0, r1 = (torch.load(tmp_path / f"rank{r}.pt", weights_only=True) for r in range(2))
    assert r0["log"] == r1["log"] == [0, 1, 0, 1]
    assert r0["skipped"] == r1["skipped"] == 1 and r0["updates"] == r1["updates"] == 2
    assert torch.equal(r0["flat"], r1["flat"])  # one model across ranks
    assert r0["calls"] == 1 and r0["meta"]["rows"] == 32 and r0["meta"]["created_at_min"] is not None


# ---- in the shared train loop: idle steps, checkpoints, resume, export ------------------------
class _ListSource:
    def __init__(self, batches):
        self.items = batches

    def batches(self, ctx, seed):
        for i in itertools.count(seed):
            yield self.items[i % len(self.items)]


def test_runs_in_the_train_loop_and_resumes(encoder_files, reviews, tmp_path):
    import pickle

    from learners.train_loop import POLICY_DIR, LoopSpec, read_policy, run_loop
    from tests.unit.test_mlm_train_loop import Recorder

    setup = OnlineSetup(fb=FeedbackSection(learning={"batch_size": 8, "rehearsal": 0.5, "lr": 2e-3}), files=encoder_files, labels=LABELS,
                        heldout=reviews[140:160])
    items = [_labeled(reviews[:4]), None, _rewarded([t for t, _ in reviews[-4:]], 1, 1.0)]
    spec = LoopSpec(objective_factory=OnlineObjective, objective_config=setup, source=_ListSource(items),
                    max_steps=6, report_every=3, eval_every=6, checkpoint_every=3)
    pickle.dumps(spec)  # travels to Ray Train workers in train_loop_config
    first = Recorder(tmp_path / "a")
    state = run_loop(spec, WorkerContext(), first.hooks(), resume_dir=None)
    assert state.step == 6 and state.totals["updates"] == 4 and state.totals["idle"] == 2
    assert "heldout_accuracy" in state.curve[-1]
    spec.max_steps = 9
    second = Recorder(tmp_path / "b")
    resumed = run_loop(spec, WorkerContext(), second.hooks(), resume_dir=str(first.checkpoints[-1][1]))
    assert resumed.step == 9 and resumed.resumes == 1
    weights, files, meta = read_policy(second.checkpoints[-1][1] / POLICY_DIR)
    assert meta["metrics"]["updates"] == 6.0 and meta["info"]["data_range"]["total"]["rows"] > 0
    texts = [t for t, _ in reviews[:6]]
    assert from_version(weights, files).predict_proba(texts).shape == (6, 2)
