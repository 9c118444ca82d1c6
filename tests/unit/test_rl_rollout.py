"""The acting side without a cluster: n-step returns, the policy, the rollout worker, the evaluator.

RolloutWorker and Evaluator are plain classes; a list stands in for the replay
writer and a scripted object for the publisher's subscription.
"""

from __future__ import annotations

import gymnasium as gym
import numpy as np
import pytest
import torch

from actors.evaluator import Evaluator, greedy_returns
from actors.nstep import NStep
from actors.rollout import RolloutWorker, WriteSize, _NumpyQ
from core.config.rl import EpsilonSection, RLSection
from core.models.q import PolicySpec, QNetwork, build_model, spec_for_env
from core.models.q_policy import QPolicy
from core.data.schemas import to_record_batch, transitions_schema

CART = PolicySpec("dqn", 4, 2, (16,))
TAXI = PolicySpec("qtable", 500, 6, (), discrete_obs=True)


# ---- n-step returns -----------------------------------------------------------------------


def _step(t, E=1, term=(), trunc=(), reward=1.0):
    """One vector step of E envs whose obs is the step number (easy to read back)."""
    te, tr = np.zeros(E, bool), np.zeros(E, bool)
    te[list(term)], tr[list(trunc)] = True, True
    obs = np.full((E, 1), t, np.float32)
    return obs, np.full(E, t, np.int64), np.full(E, reward, np.float32), obs + 1, te, tr


def test_nstep_one_passes_steps_through():
    ns = NStep(1, 0.9)
    out = ns.push(*_step(0, E=2))
    assert out[2].tolist() == [1.0, 1.0] and out[3].tolist() == [[1.0], [1.0]]
    assert out[6].tolist() == pytest.approx([0.9, 0.9])


def test_nstep_discounts_n_rewards_and_bootstraps_from_the_nth_next_obs():
    ns = NStep(3, 0.5)
    assert ns.push(*_step(0)) is None and ns.push(*_step(1, reward=2.0)) is None
    obs, act, ret, nxt, te, tr, disc = ns.push(*_step(2, reward=4.0))
    assert obs.tolist() == [[0.0]] and act.tolist() == [0] and disc.tolist() == [0.125]  # gamma**3
    assert ret.tolist() == [1.0 + 0.5 * 2.0 + 0.25 * 4.0]
    assert nxt.tolist() == [[3.0]] and not te[0] and not tr[0]
    # the window slides: the next row starts at step 1
    obs, _, ret, nxt, _, _, _ = ns.push(*_step(3, reward=8.0))
    assert obs.tolist() == [[1.0]] and ret.tolist() == [2.0 + 0.5 * 4.0 + 0.25 * 8.0] and nxt.tolist() == [[4.0]]


def test_nstep_stops_at_the_first_episode_end_per_env():
    # env 0 terminates at step 1, env 1 is truncated at step 2, env 2 runs on
    ns = NStep(3, 0.5)
    ns.push(*_step(0, E=3))
    ns.push(*_step(1, E=3, term=[0]))
    obs, _, ret, nxt, te, tr, disc = ns.push(*_step(2, E=3, trunc=[1]))
    assert ret.tolist() == [1.5, 1.75, 1.75]
    assert disc.tolist() == [0.25, 0.125, 0.125]  # gamma**k for the k rewards each row holds
    assert nxt.reshape(-1).tolist() == [2.0, 3.0, 3.0]  # the obs after each env's own last step
    assert te.tolist() == [True, False, False] and tr.tolist() == [False, True, False]


def _random_steps(T, E, seed):
    rng = np.random.default_rng(seed)
    obs = rng.normal(size=(T, E, 2)).astype(np.float32)
    return (obs, rng.integers(0, 3, (T, E)), rng.normal(size=(T, E)).astype(np.float32),
            obs + 1, rng.random((T, E)) < 0.15, rng.random((T, E)) < 0.1)


@pytest.mark.parametrize("n", [1, 2, 3, 5])
def test_push_many_emits_exactly_what_single_pushes_emit(n):
    # The worker writes through push_many; push is the readable reference. Chunks of uneven
    # size check that steps carried over between calls come out the same.
    steps = _random_steps(23, 4, seed=n)
    one, many = NStep(n, 0.9), NStep(n, 0.9)
    ref = [one.push(*(col[t] for col in steps)) for t in range(23)]
    ref = [np.concatenate(c) for c in zip(*(r for r in ref if r is not None))]
    got, start = [], 0
    for size in (1, 2, 7, 1, 12):
        out = many.push_many(*(col[start:start + size] for col in steps))
        start += size
        if out is not None:
            got.append(out)
    got = [np.concatenate(c) for c in zip(*got)]
    assert len(got[1]) == (23 - n + 1) * 4
    for a, b in zip(ref, got):
        np.testing.assert_allclose(a, b, rtol=1e-6)


# ---- the policy and its numpy twin --------------------------------------------------------


def _cart_weights(seed: int) -> dict[str, torch.Tensor]:
    torch.manual_seed(seed)
    return {k: v.clone() for k, v in QNetwork(CART).state_dict().items()}


def test_qpolicy_greedy_and_random_actions():
    policy = QPolicy(TAXI, {"q": torch.eye(500, 6) * 3.0}, version=4)  # state s prefers action s (s < 6)
    actions, q = policy.act(np.arange(6, dtype=np.float32).reshape(6, 1))
    assert policy.version == 4 and actions.tolist() == list(range(6)) and q.shape == (6, 6)
    rng = np.random.default_rng(0)
    explored, _ = policy.act(np.zeros((600, 1), np.float32), epsilon=1.0, rng=rng)
    assert set(explored.tolist()) == set(range(6))  # epsilon 1: uniform, every action shows up


def test_numpy_q_equals_the_torch_network_before_and_after_a_load():
    policy = QPolicy(PolicySpec("dqn", 4, 3, (16, 8)), version=0)
    fast = _NumpyQ.build(policy)
    obs = np.random.default_rng(0).normal(size=(32, 4)).astype(np.float32)
    np.testing.assert_allclose(fast.q_values(obs), policy.q_values(obs), rtol=1e-5, atol=1e-6)
    torch.manual_seed(1)
    policy.load(build_model(policy.spec).state_dict(), version=1)  # new weights, same tensors
    before = fast.q_values(obs)
    assert not np.allclose(before, policy.q_values(obs))  # a copy: the worker must rebuild per version
    np.testing.assert_allclose(_NumpyQ.build(policy).q_values(obs), policy.q_values(obs), rtol=1e-5, atol=1e-6)


def test_numpy_q_declines_what_it_cannot_mirror():
    assert _NumpyQ.build(QPolicy(TAXI)) is None  # a table
    assert _NumpyQ.build(QPolicy(PolicySpec("dqn", 500, 6, (8,), discrete_obs=True))) is None  # one-hot input


# ---- the rollout worker -------------------------------------------------------------------


class ListWriter:
    def __init__(self):
        self.adds = []

    def add(self, table, batch, timeout_s=None):
        self.adds.append((table, batch))


class ScriptedSource:
    """Offers `weights` as `version` on the `at`-th poll (1-based), nothing otherwise."""

    def __init__(self, at: int, version: int, weights):
        self.at, self.version, self.weights, self.polls, self.acks = at, version, weights, 0, []

    def poll(self):
        self.polls += 1
        return (self.version, self.weights) if self.polls == self.at else None

    def ack(self, version):
        self.acks.append(version)


def _worker(num_envs=2, n_step=1, eps=(0.0, 0.0, 10), source=None, env="CartPole-v1", algo="dqn", seed=0):
    cfg = RLSection(policy_id="cartpole", env_id=env, algo=algo, hidden=[16], learning={"n_step": n_step},
                    acting={"num_envs": num_envs, "epsilon": EpsilonSection(start=eps[0], end=eps[1], decay_steps=eps[2])})
    torch.manual_seed(seed)
    return RolloutWorker(cfg, spec_for_env(env, algo, cfg.hidden), "a0", ListWriter(), source, seed=seed)


def _rows(worker) -> dict[str, np.ndarray]:
    batches = [b for _, b in worker.writer.adds]
    out = {}
    for name in ("id", "policy_version", "action", "reward", "terminated", "truncated"):
        out[name] = np.concatenate([b.column(name).to_numpy(zero_copy_only=False) for b in batches])
    for name in ("obs", "next_obs"):
        out[name] = np.concatenate([b.column(name).flatten().to_numpy().reshape(b.num_rows, -1) for b in batches])
    return out


def test_worker_writes_valid_transition_batches_that_chain_per_env():
    w = _worker(num_envs=3, eps=(1.0, 1.0, 10))
    assert w.run(40) == 120
    table, batch = w.writer.adds[0]
    assert table == "transitions"
    assert batch.schema == transitions_schema(4)
    to_record_batch(table, transitions_schema(4), batch)  # the store's own validation passes
    assert set(batch.column("source").to_pylist()) == {"rollout"}
    r = _rows(w)
    obs, nxt = r["obs"].reshape(40, 3, 4), r["next_obs"].reshape(40, 3, 4)  # rows are step-major
    done = (r["terminated"] | r["truncated"]).reshape(40, 3)
    assert done.any()  # random CartPole ends episodes within 40 steps
    # next_obs of a step is the obs of the following step, except at an episode end where
    # it is the final observation (the env has already reset for the next step)
    for t in range(39):
        same = np.all(nxt[t] == obs[t + 1], axis=1)
        assert same[~done[t]].all()
        assert not same[done[t]].any()
    # n = 1: every row holds one reward, so every row bootstraps with gamma
    disc = np.concatenate([b.column("discount").to_numpy() for _, b in w.writer.adds])
    np.testing.assert_allclose(disc, w.cfg.learning.gamma)


def test_worker_tracks_episodes_consistently_with_the_rows():
    w = _worker(num_envs=4, eps=(1.0, 1.0, 10))
    w.run(60)
    r = _rows(w)
    ends = int((r["terminated"] | r["truncated"]).sum())
    st = w.stats()
    assert st["episodes"] == ends == len(w.recent_returns) > 0
    assert st["env_steps"] == st["rows_written"] == 240
    # CartPole pays 1 per step: a return is the episode's length, and every reward is either
    # in a finished episode or in one still running
    assert list(w.recent_returns) == list(map(float, w.recent_lengths))
    assert sum(w.recent_returns) + w.episode_return.sum() == pytest.approx(r["reward"].sum())
    assert st["mean_return"] == pytest.approx(np.mean(w.recent_returns))


def test_worker_epsilon_follows_vector_steps():
    w = _worker(num_envs=4, eps=(1.0, 0.0, 10))
    w.run(5)
    assert w.stats()["epsilon"] == pytest.approx(0.5)  # 5 vector steps of 10, not 20 env steps
    w.run(10)
    assert w.stats()["epsilon"] == 0.0


def test_greedy_worker_acts_with_the_policys_argmax():
    w = _worker(num_envs=4)
    w.run(10)
    r = _rows(w)
    expected, _ = w.policy.act(r["obs"])
    assert r["action"].tolist() == expected.tolist()


def test_fast_epsilon_greedy_draws_like_qpolicy_act():
    # _act skips torch but must make the same choices from the same random draws
    w = _worker(num_envs=16)
    w.obs = np.random.default_rng(1).normal(size=(16, 4)).astype(np.float32)
    w.rng = np.random.default_rng(7)
    fast = w._act(0.5)
    ref, _ = w.policy.act(w.obs, 0.5, np.random.default_rng(7))
    assert fast.tolist() == ref.tolist()


def test_row_ids_are_unique_across_writes_and_restarts():
    w = _worker(num_envs=2, n_step=3)
    assert w.run(5) == 6  # the last n-1 steps wait for their n-step return
    assert w.run(5) == 10
    ids = _rows(w)["id"].tolist()
    assert ids == [f"a0-{w.incarnation}-{i}" for i in range(16)]
    again = _worker(num_envs=2, n_step=3)  # the same actor id after a restart
    again.run(5)
    assert not set(_rows(again)["id"]) & set(ids)


def test_worker_switches_to_a_new_version_and_acks_it():
    # version 1 always prefers action 1: zero weights, bias [0, 1] in the last layer
    new = {k: torch.zeros_like(v) for k, v in QNetwork(CART).state_dict().items()}
    new["net.2.bias"] = torch.tensor([0.0, 1.0])
    src = ScriptedSource(at=3, version=1, weights=new)
    w = _worker(num_envs=2, source=src)
    w.run(6)
    assert src.acks == [1] and src.polls == 6  # one poll per vector step
    assert w.stats()["policy_version"] == 1
    r = _rows(w)
    assert (r["action"].reshape(6, 2)[2:] == 1).all()  # acting with v1 from the third step on
    w.run(2)
    assert set(w.writer.adds[-1][1].column("policy_version").to_pylist()) == {1}


def test_rows_carry_the_version_that_chose_their_action():
    new = {k: v.clone() for k, v in QNetwork(CART).state_dict().items()}
    w = _worker(num_envs=2, source=ScriptedSource(at=3, version=1, weights=new))
    w.run(6)
    versions = _rows(w)["policy_version"].reshape(6, 2)
    assert versions[:2].tolist() == [[0, 0], [0, 0]]  # steps 1-2 were acted by version 0
    assert versions[2:].tolist() == [[1, 1]] * 4


def test_worker_on_a_discrete_env_stores_the_state_as_one_number():
    w = _worker(num_envs=3, env="Taxi-v3", algo="qtable", eps=(1.0, 1.0, 10))
    w.run(8)
    batch = w.writer.adds[0][1]
    assert batch.schema == transitions_schema(1)
    states = _rows(w)["obs"].reshape(-1)
    assert np.all((states >= 0) & (states < 500) & (states == np.round(states)))
    assert set(_rows(w)["reward"].tolist()) <= {-1.0, -10.0, 20.0}  # Taxi's rewards


# ---- the evaluator ------------------------------------------------------------------------


def _always(action: int) -> dict[str, torch.Tensor]:
    w = {k: torch.zeros_like(v) for k, v in QNetwork(CART).state_dict().items()}
    w["net.2.bias"][action] = 1.0
    return w


def _first_episode_return(env_id: str, seed: int, action: int) -> float:
    env = gym.make(env_id)
    env.reset(seed=seed)
    total, done = 0.0, False
    while not done:
        _, r, te, tr, _ = env.step(action)
        total, done = total + r, te or tr
    return total


def test_greedy_returns_count_only_each_envs_first_episode():
    policy = QPolicy(CART, _always(0))
    returns = greedy_returns("CartPole-v1", policy, episodes=4, seed=100)
    # the vector env seeds env i with seed + i; envs that end early keep stepping
    # (autoreset) while others finish, and must not add their second episode
    assert returns.tolist() == [_first_episode_return("CartPole-v1", 100 + i, 0) for i in range(4)]
    assert 5 <= returns.min() and returns.max() <= 15  # always pushing left falls quickly


def test_greedy_taxi_with_an_empty_table_times_out_at_minus_200():
    returns = greedy_returns("Taxi-v3", QPolicy(TAXI), episodes=3, seed=0)
    assert returns.tolist() == [-200.0] * 3  # argmax 0 (south) forever: 200 steps of -1


def test_evaluator_keeps_one_result_per_version():
    ev = Evaluator("CartPole-v1", CART, episodes=3, seed=5)
    first = ev.evaluate(1, _always(0))
    second = ev.evaluate(2, _always(1))
    assert [r["version"] for r in ev.results] == [1, 2] and ev.policy.version == 2
    assert first["eval_return"] == pytest.approx(
        np.mean([_first_episode_return("CartPole-v1", 5 + i, 0) for i in range(3)]))
    assert first["eval_return_min"] <= first["eval_return"] and first["episodes"] == 3
    assert np.isfinite(second["eval_return"]) and second["eval_return"] >= 5


def test_a_return_at_the_threshold_is_confirmed_on_more_episodes_before_it_counts():
    # always pushing left returns 8-10 on CartPole: a solve return of 9 is reached by luck on some
    # seeds, not on the mean of many
    lucky = next(seed for seed in range(200)
                 if np.mean([_first_episode_return("CartPole-v1", seed + i, 0) for i in range(3)]) >= 9.5)
    ev = Evaluator("CartPole-v1", CART, episodes=3, seed=lucky, solve_return=9.5, confirm_episodes=50)
    result = ev.evaluate(1, _always(0))
    confirm = np.mean([_first_episode_return("CartPole-v1", lucky + 3 + i, 0) for i in range(50)])
    assert result["eval_return"] >= 9.5 and result["confirm_episodes"] == 50
    assert result["confirm_return"] == pytest.approx(confirm) and confirm < 9.5
    assert result["confirmed"] is False
    easy = Evaluator("CartPole-v1", CART, episodes=3, seed=lucky, solve_return=5.0, confirm_episodes=20)
    assert easy.evaluate(1, _always(0))["confirmed"] is True  # every episode lasts at least 8 steps
    below = Evaluator("CartPole-v1", CART, episodes=3, seed=lucky, solve_return=100.0)
    assert "confirmed" not in below.evaluate(1, _always(0))  # not reached: nothing to confirm


# ---- WriteSize: adds shrink while the store paces the actor, grow back when it does not ----


def test_write_size_halves_to_its_floor_while_adds_are_held_back():
    size = WriteSize(32, 256)
    assert size.now == 256
    assert [size.update(step_s=0.1, wait_s=2.0) for _ in range(4)] == [128, 64, 32, 32]


def test_write_size_doubles_back_when_adds_return_quickly_and_holds_in_between():
    size = WriteSize(32, 256)
    for _ in range(3):
        size.update(step_s=0.1, wait_s=2.0)
    assert size.now == 32
    assert size.update(step_s=0.1, wait_s=0.05) == 32  # between a quarter and all of the step time: keep
    assert [size.update(step_s=0.1, wait_s=0.01) for _ in range(4)] == [64, 128, 256, 256]


def test_fixed_write_size_without_a_floor():
    size = WriteSize(64, 64)
    assert size.update(step_s=0.1, wait_s=5.0) == 64 and size.update(step_s=0.1, wait_s=0.0) == 64
