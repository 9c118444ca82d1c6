"""The Q learners without a cluster: the tabular rule, DQN, and the replay-fed batch source.

Objectives are plain classes driven with `WorkerContext()`; the replay client
and the publisher are small fakes exposing the calls the learners make.
"""

from __future__ import annotations

import io
import threading
import time

import numpy as np
import pyarrow as pa
import pytest
import torch
import torch.nn.functional as F

from actors.nstep import NStep
from core.replay.table import ReplayTimeout
from core.config.rl import RLSection
from core.models.q import PolicySpec
from learners.dqn import DQNObjective
from learners.objective import WorkerContext
from learners.q_learning import QSetup, QTableObjective
from learners.replay_source import ReplayTransitionSource, transitions_to_tensors

TABLE = PolicySpec("qtable", 4, 2, (), discrete_obs=True)
MLP = PolicySpec("dqn", 4, 2, (16,))


class FakePublisher:
    """Records `publisher.publish.remote(...)` calls (an actor handle in a real run)."""

    def __init__(self):
        self.calls = []
        self.publish = self  # so that publisher.publish.remote(...) lands in remote()

    def remote(self, *args):
        self.calls.append(args)


def _objective(cls, spec, ctx=None, lr=1e-2, publisher=None, priorities=None, policy_id="cartpole", seed=0,
               **learning):
    """An objective of `cls` on `spec`; `learning`: keys of the RL section's learning group."""
    learning.setdefault("lr", lr)
    rl = RLSection(policy_id=policy_id, seed=seed, algo="qtable" if cls is QTableObjective else "dqn",
                   hidden=list(spec.hidden), learning=learning)
    obj = cls()
    obj.setup(QSetup(rl=rl, spec=spec.to_dict(), publisher=publisher, priorities=priorities, loop="cartpole"),
              ctx or WorkerContext())
    return obj


def _batch(obs, action, reward, next_obs, terminated, weight=None):
    n = len(action)
    return {
        "obs": torch.as_tensor(obs, dtype=torch.float32).reshape(n, -1),
        "next_obs": torch.as_tensor(next_obs, dtype=torch.float32).reshape(n, -1),
        "action": torch.as_tensor(action, dtype=torch.int64),
        "reward": torch.as_tensor(reward, dtype=torch.float32),
        "terminated": torch.as_tensor(terminated, dtype=torch.float32),
        "weight": torch.ones(n) if weight is None else torch.as_tensor(weight, dtype=torch.float32),
        "key": torch.arange(100, 100 + n),
    }


def _random_batch(n=32, seed=0, obs_dim=4, n_actions=2):
    g = torch.Generator().manual_seed(seed)
    return _batch(torch.randn(n, obs_dim, generator=g), torch.randint(0, n_actions, (n,), generator=g),
                  torch.randn(n, generator=g), torch.randn(n, obs_dim, generator=g),
                  (torch.rand(n, generator=g) < 0.2).float())


def _params(module):
    return [p.detach().clone() for p in module.parameters()]


def _same(a, b):
    return all(torch.equal(x, y) for x, y in zip(a, b))


# ---- the tabular rule ---------------------------------------------------------------------


def test_qtable_update_by_hand():
    obj = _objective(QTableObjective, TABLE, gamma=0.9, n_step=1, qtable_alpha=0.5)
    q = obj.model.q.data
    q[1] = torch.tensor([1.0, 3.0])
    q[2] = torch.tensor([5.0, -1.0])
    # rows: (s, a, r, s', terminated); the last two hit the same (s, a) and share one averaged step
    out = obj.step(_batch([0, 2, 3, 3], [1, 0, 0, 0], [1.0, 2.0, 1.0, 3.0], [1, 1, 0, 0], [0, 1, 1, 1]))
    assert q[0, 1].item() == pytest.approx(0.5 * (1 + 0.9 * 3))  # bootstraps from max Q[1] = 3
    assert q[2, 0].item() == pytest.approx(5 + 0.5 * (2 - 5))  # terminated: no bootstrap
    assert q[3, 0].item() == pytest.approx(0.5 * (1 + 3) / 2)  # TD errors 1 and 3 averaged, not summed
    assert q[1].tolist() == [1.0, 3.0] and q[0, 0].item() == 0.0  # untouched cells stay
    assert out["loss"] == pytest.approx((3.7**2 + 3**2 + 1 + 3**2) / 4)
    assert (out["samples"], out["updates"], obj.updates) == (4.0, 1.0, 1)


def test_qtable_bootstraps_with_gamma_to_the_n():
    obj = _objective(QTableObjective, TABLE, gamma=0.5, n_step=2, qtable_alpha=1.0)
    obj.model.q.data[1] = torch.tensor([4.0, 2.0])
    obj.step(_batch([0], [0], [1.0], [1], [0]))
    assert obj.model.q.data[0, 0].item() == pytest.approx(1 + 0.25 * 4)


def test_a_row_truncated_after_one_step_bootstraps_with_gamma():
    ns = NStep(3, 0.5)
    for t in range(3):  # the episode is truncated right after the first step
        row = ns.push(np.array([[0.0]]), np.array([0]), np.array([1.0], np.float32), np.array([[1.0]]),
                      np.array([False]), np.array([t == 0]))
    obs, act, ret, nxt, term, trunc, disc = row
    assert trunc.tolist() == [True] and ret.tolist() == [1.0] and disc.tolist() == [0.5]
    obj = _objective(QTableObjective, TABLE, gamma=0.5, n_step=3, qtable_alpha=1.0)
    obj.model.q.data[1] = torch.tensor([4.0, 0.0])
    obj.step({**_batch(obs, act, ret, nxt, term), "discount": torch.as_tensor(disc)})
    assert obj.model.q.data[0, 0].item() == pytest.approx(1 + 0.5 * 4)  # one reward, one discount


@pytest.mark.parametrize("objective", [QTableObjective, DQNObjective])
def test_rows_without_a_discount_bootstrap_with_gamma_to_the_n(objective):
    obj = _objective(objective, TABLE if objective is QTableObjective else MLP, gamma=0.5, n_step=3)
    batch = _batch([0], [0], [1.0], [1], [0])
    assert obj.bootstrap_discount(batch) == pytest.approx(0.125)  # no column: gamma**n
    nan = torch.tensor([float("nan"), 0.25])
    assert obj.bootstrap_discount({**batch, "discount": nan}).tolist() == pytest.approx([0.125, 0.25])


def test_qtable_refuses_a_non_finite_batch():
    obj = _objective(QTableObjective, TABLE)
    before = obj.model.q.data.clone()
    out = obj.step(_batch([0], [0], [float("inf")], [1], [0]))
    assert torch.equal(obj.model.q.data, before)
    assert (out["updates"], out["skipped_nonfinite"], obj.updates) == (0.0, 1.0, 0)


def test_publishes_every_n_updates_from_rank_zero_only():
    pub = FakePublisher()
    obj = _objective(QTableObjective, TABLE, publisher=pub, publish_every=2, policy_id="taxi")
    for _ in range(5):
        obj.step(_batch([0], [1], [1.0], [1], [0]))
    assert [c[2]["data_range"]["updates"] for c in pub.calls] == [2, 4]
    policy_id, weights, meta, spec, published_at = pub.calls[-1]
    assert policy_id == "taxi" and PolicySpec.from_dict(spec) == TABLE
    # alpha 0.5 towards 1 four times: the weights as they were at update 4, not a live view
    assert weights["q"][0, 1].item() == pytest.approx(1 - 0.5**4)
    assert obj.model.q.data[0, 1].item() == pytest.approx(1 - 0.5**5)
    assert meta["info"]["objective"] == "qtable" and abs(published_at - time.time()) < 60
    other = FakePublisher()
    rank1 = _objective(QTableObjective, TABLE, ctx=WorkerContext(rank=1), publisher=other, publish_every=2)
    for _ in range(4):
        rank1.step(_batch([0], [1], [1.0], [1], [0]))
    assert other.calls == []


def test_never_publishes_non_finite_weights():
    pub = FakePublisher()
    obj = _objective(QTableObjective, TABLE, publisher=pub)
    obj.model.q.data[0, 0] = float("nan")
    obj.publish()
    assert pub.calls == []


# ---- DQN ----------------------------------------------------------------------------------


def test_dqn_starts_from_the_seeds_weights():
    # every DDP rank builds its own model; the same seed must give the same start
    a, b = _objective(DQNObjective, MLP, seed=3), _objective(DQNObjective, MLP, seed=3)
    assert _same(_params(a.model), _params(b.model))
    assert not _same(_params(a.model), _params(_objective(DQNObjective, MLP, seed=4).model))
    assert _same(_params(a.model), _params(a.target))


def test_dqn_loss_falls_on_a_fixed_batch():
    obj = _objective(DQNObjective, MLP, target_update_every=10_000)  # a fixed target: plain regression
    batch = _random_batch()
    losses = [obj.step(batch)["loss"] for _ in range(60)]
    assert losses[-1] < 0.3 * losses[0]
    assert obj.updates == 60


def test_target_syncs_every_n_updates_and_not_before():
    obj = _objective(DQNObjective, MLP, target_update_every=3)
    start = _params(obj.target)
    batch = _random_batch()
    for _ in range(2):
        obj.step(batch)
    assert _same(_params(obj.target), start)  # still the initial copy after 2 updates
    obj.step(batch)
    synced = _params(obj.target)
    assert _same(synced, _params(obj.model)) and not _same(synced, start)  # the 3rd update copies
    obj.step(batch)
    assert _same(_params(obj.target), synced) and not _same(synced, _params(obj.model))


@pytest.mark.parametrize("bad", [float("nan"), float("inf")])
def test_dqn_refuses_a_non_finite_loss(bad):
    prio = RecordingSampler()
    obj = _objective(DQNObjective, MLP, priorities=ReplayTransitionSource(prio, "t", 4))
    obj.step(_random_batch(seed=1))
    weights, adam = _params(obj.model), obj.optimizer.state_dict()["state"][0]["step"].item()
    prio.priority_calls.clear()
    batch = _random_batch(seed=2)
    batch["reward"][3] = bad
    out = obj.step(batch)
    assert (out["updates"], out["skipped_nonfinite"]) == (0.0, 1.0)
    assert _same(_params(obj.model), weights)
    assert obj.optimizer.state_dict()["state"][0]["step"].item() == adam  # no optimizer step either
    assert prio.priority_calls == []  # no priorities from a refused batch
    assert obj.step(_random_batch(seed=3))["updates"] == 1.0 and obj.updates == 2  # and it carries on


def _expected_td(obj, batch, double_q):
    """y - Q(s, a) recomputed from the nets as they are before the step."""
    with torch.no_grad():
        q = obj.model(batch["obs"]).gather(1, batch["action"][:, None]).squeeze(1)
        chooser = obj.model if double_q else obj.target
        best = chooser(batch["next_obs"]).argmax(1, keepdim=True)
        y = batch["reward"] + obj.cfg.learning.gamma**obj.cfg.learning.n_step * (1 - batch["terminated"]) * \
            obj.target(batch["next_obs"]).gather(1, best).squeeze(1)
    return y - q, q, y


@pytest.mark.parametrize("double_q", [True, False])
def test_dqn_sends_abs_td_as_priorities(double_q):
    prio = RecordingSampler()
    obj = _objective(DQNObjective, MLP, priorities=ReplayTransitionSource(prio, "transitions", 4),
                     double_q=double_q, gamma=0.9, n_step=2, target_update_every=10_000)
    with torch.no_grad():  # make the target net disagree with the online net about the best action
        torch.manual_seed(9)
        for p in obj.target.parameters():
            p.add_(torch.randn_like(p))
    batch = _random_batch(seed=4)
    td, _, _ = _expected_td(obj, batch, double_q)
    other, _, _ = _expected_td(obj, batch, not double_q)
    assert not torch.allclose(td, other)  # the choice of chooser is visible in this batch
    obj.step(batch)
    (table, keys, priorities, wait), = prio.priority_calls
    assert table == "transitions" and wait is False
    assert keys.tolist() == batch["key"].tolist()
    assert priorities.dtype == np.float64
    np.testing.assert_allclose(priorities, td.abs().numpy(), rtol=1e-5, atol=1e-6)


def test_dqn_loss_is_importance_weighted():
    obj = _objective(DQNObjective, MLP, huber_delta=0.5)
    batch = _random_batch(seed=5)
    batch["weight"] = torch.linspace(0.1, 1.0, 32)
    _, q, y = _expected_td(obj, batch, True)
    expected = (batch["weight"] * F.huber_loss(q, y, reduction="none", delta=0.5)).mean()
    assert obj.step(batch)["loss"] == pytest.approx(expected.item(), rel=1e-5)
    # weights of zero: a finite loss of 0 and no change to a fresh model (Adam has no momentum yet)
    fresh = _objective(DQNObjective, MLP)
    zero = _random_batch(seed=6)
    zero["weight"] = torch.zeros(32)
    before = _params(fresh.model)
    out = fresh.step(zero)
    assert (out["loss"], out["updates"]) == (0.0, 1.0)
    assert _same(_params(fresh.model), before)


def test_dqn_resumes_exactly_from_its_state():
    obj = _objective(DQNObjective, MLP, target_update_every=4)
    for seed in range(5):
        obj.step(_random_batch(seed=seed))
    resumed = _objective(DQNObjective, MLP, target_update_every=4, seed=1)
    buf = io.BytesIO()  # through bytes, as a checkpoint goes: state_dict() shares live tensors
    torch.save(obj.state_dict(), buf)
    buf.seek(0)
    resumed.load_state_dict(torch.load(buf, weights_only=True))
    assert resumed.updates == 5
    for seed in range(5, 9):  # crosses the next target sync (update 8) in both
        batch = _random_batch(seed=seed)
        assert resumed.step(batch)["loss"] == pytest.approx(obj.step(batch)["loss"])
    assert _same(_params(resumed.model), _params(obj.model)) and _same(_params(resumed.target), _params(obj.target))


# ---- the replay-fed batch source ----------------------------------------------------------


class RecordingSampler:
    """A replay client: `script` items are raised (exceptions) or give that many rows (ints);
    after the script every sample returns the rows asked for, keys counting up."""

    def __init__(self, script=(), weights=False):
        self.script, self.weights = list(script), weights
        self.calls, self.priority_calls, self.next_key = [], [], 0

    def sample(self, table, n, timeout_s=None):
        self.calls.append((table, n, timeout_s))
        item = self.script.pop(0) if self.script else n
        if isinstance(item, BaseException):
            time.sleep(0.01)  # a real timeout waits; do not spin the CPU
            raise item
        keys = np.arange(self.next_key, self.next_key + item)
        self.next_key += item
        return _sampled(keys, self.weights)

    def update_priorities(self, table, keys, priorities, wait=True):
        self.priority_calls.append((table, keys, priorities, wait))


def _sampled(keys, weights=False):
    n = len(keys)
    obs = pa.FixedSizeListArray.from_arrays(pa.array(np.repeat(keys, 2).astype(np.float32)), 2)
    cols = {"obs": obs, "next_obs": obs, "action": pa.array(keys % 2), "reward": pa.array(keys.astype(np.float32)),
            "terminated": pa.array(keys % 3 == 0), "_key": pa.array(keys, pa.int64())}
    if weights:
        cols["_weight"] = pa.array(np.full(n, 0.5, np.float32))
    return pa.RecordBatch.from_pydict(cols)


def test_transitions_to_tensors():
    t = transitions_to_tensors(_sampled(np.arange(3)))
    assert t["obs"].tolist() == [[0, 0], [1, 1], [2, 2]] and t["obs"].dtype == torch.float32
    assert t["action"].tolist() == [0, 1, 0] and t["action"].dtype == torch.int64
    assert t["terminated"].tolist() == [1.0, 0.0, 0.0] and t["key"].tolist() == [0, 1, 2]
    assert t["weight"].tolist() == [1.0, 1.0, 1.0]  # uniform sampling: no IS weights
    assert transitions_to_tensors(_sampled(np.arange(3), weights=True))["weight"].tolist() == [0.5] * 3


def test_one_sample_is_cut_into_batches_per_sample_batches():
    fake = RecordingSampler()
    src = ReplayTransitionSource(fake, "transitions", batch_size=4, batches_per_sample=3, sample_timeout_s=1.5)
    it = src.batches(WorkerContext(), seed=0)
    keys = [next(it)["key"].tolist() for _ in range(4)]
    it.close()
    assert fake.calls[0] == ("transitions", 12, 1.5)
    assert keys == [[0, 1, 2, 3], [4, 5, 6, 7], [8, 9, 10, 11], [12, 13, 14, 15]]


def test_timeouts_and_empty_samples_are_waited_out():
    fake = RecordingSampler([ReplayTimeout("below min_size"), TimeoutError("rate limited"), 0])
    it = ReplayTransitionSource(fake, "t", batch_size=2, batches_per_sample=1).batches(WorkerContext(), 0)
    assert next(it)["key"].tolist() == [0, 1]
    it.close()
    assert len(fake.calls) >= 4


def test_no_batch_for_max_wait_s_is_an_error():
    fake = RecordingSampler([TimeoutError()] * 10_000)
    it = ReplayTransitionSource(fake, "transitions", batch_size=2, max_wait_s=0.3).batches(WorkerContext(), 0)
    started = time.monotonic()
    with pytest.raises(TimeoutError, match="replay table 'transitions': no batch for"):
        next(it)
    assert 0.3 <= time.monotonic() - started < 3


def test_sampler_errors_reach_the_learner():
    fake = RecordingSampler([RuntimeError("shard lost")])
    it = ReplayTransitionSource(fake, "t", batch_size=2).batches(WorkerContext(), 0)
    with pytest.raises(RuntimeError, match="shard lost"):
        next(it)


def test_closing_the_iterator_stops_the_prefetch_thread():
    fake = RecordingSampler()
    before = set(threading.enumerate())
    it = ReplayTransitionSource(fake, "t", batch_size=2, batches_per_sample=1, prefetch=1).batches(WorkerContext(), 0)
    next(it)
    (thread,) = set(threading.enumerate()) - before
    deadline = time.monotonic() + 5
    while len(fake.calls) < 3 and time.monotonic() < deadline:  # the queue refills: the thread now waits in put
        time.sleep(0.01)
    it.close()
    thread.join(timeout=1)
    assert not thread.is_alive()
