"""evolve_client.play and `evolve play` against an in-process fake of the client-episode API."""

from __future__ import annotations

import re
import threading

import gymnasium as gym
import httpx
import numpy as np
import pytest

from cluster import play_cli
from cluster.cli import main
from evolve_client import PolicyClient, PolicyClientError
from evolve_client.play import play
from tests.unit.fake_policy_api import FakePolicyAPI

SAME_STEP = gym.vector.AutoresetMode.SAME_STEP


def falls_soon(obs: list[float]) -> int:
    """A poor fixed policy, so CartPole episodes end within tens of steps."""
    return int(obs[2] > 0.05)


def client_of(fake: FakePolicyAPI, **kw) -> PolicyClient:
    return PolicyClient("http://fake", policy_id=fake.policy_id, transport=fake.transport, sleep=lambda s: None, **kw)


class CountingVectorEnv(gym.vector.SyncVectorEnv):
    def __init__(self, num_envs: int, max_episode_steps: int = 500):
        super().__init__([lambda: gym.make("CartPole-v1", max_episode_steps=max_episode_steps)] * num_envs,
                         autoreset_mode=SAME_STEP)
        self.steps = 0

    def step(self, actions):
        self.steps += 1
        return super().step(actions)


def test_one_batched_act_per_vector_step_and_each_return_is_what_the_server_stored():
    fake = FakePolicyAPI(rule=falls_soon)
    venv = CountingVectorEnv(4)
    results = []
    summary = play(venv, client_of(fake), episodes=12, num_envs=4, seed=3, on_episode=results.append)
    assert [r.number for r in results] == list(range(1, 13))
    assert fake.count("act") == venv.steps
    acts = [body for _, route, body, _ in fake.requests if route == "act"]
    assert all(1 <= len(b["episode_ids"]) <= 4 for b in acts) and len(acts[0]["episode_ids"]) == 4
    assert len(fake.episodes) == 12 and all(ep.state == "terminated" for ep in fake.episodes.values())
    for r in results:
        ep = fake.episodes[r.episode_id]
        assert (r.episode_return, r.length) == (sum(ep.rewards.values()), ep.next)
        assert r.terminated and r.versions == (7,) and r.version == 7
    assert set(fake.stored.values()) == {1}
    assert summary.episodes == 12 and summary.steps == sum(r.length for r in results)
    assert summary.mean_return == pytest.approx(np.mean([r.episode_return for r in results]))
    assert fake.count("episodes") <= 12 // 4 + 1  # opened num_envs at a time, not one request per finish


def test_finished_episodes_are_ended_a_quarter_of_the_copies_at_a_time():
    fake = FakePolicyAPI(rule=falls_soon)
    results = []
    summary = play("CartPole-v1", client_of(fake), episodes=40, num_envs=8, seed=5, on_episode=results.append)
    ends = [body for _, route, body, _ in fake.requests if route == "episodes/end"]
    assert all(len(b["episode_ids"]) >= 2 for b in ends[:-1])  # the last end takes what is left
    assert len(ends) <= 40 // 2 and sum(len(b["episode_ids"]) for b in ends) == 40
    assert [r.number for r in results] == list(range(1, 41)) and summary.episodes == 40
    assert all(ep.state == "terminated" for ep in fake.episodes.values())
    assert set(fake.stored.values()) == {1}


def test_a_finished_episode_waits_at_most_end_wait_s_for_others(monkeypatch):
    import evolve_client.play as player

    monkeypatch.setattr(player, "END_WAIT_S", 0.0)  # a slow env: every finished episode ended at once
    fake = FakePolicyAPI(rule=falls_soon)
    play("CartPole-v1", client_of(fake), episodes=12, num_envs=8, seed=5)
    ends = [body for _, route, body, _ in fake.requests if route == "episodes/end"]
    acts = [body for _, route, body, _ in fake.requests if route == "act"]
    assert sum(len(b["episode_ids"]) for b in ends) == 12 and any(len(b["episode_ids"]) == 1 for b in ends)
    assert len(ends) <= len(acts)  # one end request per vector step at the most


def test_the_returns_are_the_envs_own_under_the_served_actions():
    """One copy, played locally with the same seed and the same rule: the same returns."""
    fake = FakePolicyAPI(rule=falls_soon)
    results = []
    play("CartPole-v1", client_of(fake), episodes=4, seed=11, on_episode=results.append)
    env = gym.make("CartPole-v1")
    expected = []
    for k in range(4):
        obs, _ = env.reset(seed=11 if k == 0 else None)
        total, done = 0.0, False
        while not done:
            obs, reward, terminated, truncated, _ = env.step(falls_soon(obs.tolist()))
            total, done = total + reward, terminated or truncated
        expected.append(total)
    assert [r.episode_return for r in results] == expected


def test_a_time_limit_ends_the_episode_as_truncated_with_its_final_observation():
    fake = FakePolicyAPI()  # balances: every episode reaches the limit
    results = []
    play(CountingVectorEnv(2, max_episode_steps=15), client_of(fake), episodes=3, num_envs=2,
         on_episode=results.append)
    assert [(r.length, r.terminated) for r in results] == [(15, False)] * 3
    ends = [body for _, route, body, _ in fake.requests if route == "episodes/end"]
    assert all(len(obs) == 4 for b in ends for obs in b["final_obs"]) and all(all(b["truncated"]) for b in ends)
    assert all(ep.state == "truncated" for ep in fake.episodes.values())


def test_retries_mid_play_count_no_step_twice():
    fake = FakePolicyAPI(rule=falls_soon)
    fake.fault("act", drop=True, applied=True, times=2)
    fake.fault("act", status=503, retry_after=0)
    fake.fault("episodes/end", status=504, applied=True)
    fake.fault("episodes", drop=True, applied=True)
    client = client_of(fake)
    results = []
    play("CartPole-v1", client, episodes=6, num_envs=3, on_episode=results.append)
    assert client.retries == 5
    assert set(fake.stored.values()) == {1}
    for r in results:
        assert (r.episode_return, r.length) == (sum(fake.episodes[r.episode_id].rewards.values()),
                                                 fake.episodes[r.episode_id].next)


def test_a_refusal_mid_play_stops_it_with_the_clients_reason():
    fake = FakePolicyAPI(rule=falls_soon)
    fake.fault("act", status=503, retry_after=1, times=3)
    with pytest.raises(PolicyClientError, match="POST act: gave up after 3 tries; the last: 503 fake: busy"):
        play("CartPole-v1", client_of(fake, max_retries=2), episodes=2)


def test_stop_ends_the_running_episodes_as_truncated_and_reports_only_finished_ones():
    fake = FakePolicyAPI(rule=falls_soon)
    stop = threading.Event()
    results = []

    def on_episode(r):
        results.append(r)
        assert len(results) < 50, "play went on after stop was set"
        stop.set()

    summary = play("CartPole-v1", client_of(fake), num_envs=4, on_episode=on_episode, stop=stop)
    played = [eid for eid, ep in fake.episodes.items() if ep.next > 0]
    assert summary.episodes == len(results) >= 1
    assert len(played) == 4 and all(fake.episodes[eid].state != "open" for eid in played)
    finished = {r.episode_id for r in results}
    assert all(fake.episodes[eid].state == "truncated" for eid in played if eid not in finished)
    assert set(fake.stored.values()) == {1}


def test_an_episode_served_by_two_versions_names_both():
    fake = FakePolicyAPI(rule=falls_soon, version_per_row=True)
    handle = fake.handle

    def new_version_midway(request):
        if fake.count("act") == 5:
            fake.version = 8
        return handle(request)

    client = PolicyClient("http://fake/v1/policies/cartpole", transport=httpx.MockTransport(new_version_midway))
    results = []
    play("CartPole-v1", client, episodes=2, on_episode=results.append)
    assert results[0].versions == (7, 8) and results[0].version is None and results[1].versions == (8,)


def test_one_env_instance_with_discrete_states_is_played():
    fake = FakePolicyAPI(obs_dim=1, n_actions=4, rule=lambda obs: 2)  # FrozenLake: always right
    results = []
    play(gym.make("FrozenLake-v1", is_slippery=False), client_of(fake), episodes=2, on_episode=results.append)
    first = [body["obs"] for _, route, body, _ in fake.requests if route == "act"][:3]
    assert first == [[[0.0]], [[1.0]], [[2.0]]]  # state s as the row [s]
    # along the top row to its end, then against the wall until the time limit
    assert [(r.length, r.episode_return, r.terminated) for r in results] == [(100, 0.0, False)] * 2


def test_only_discrete_actions_are_played():
    with pytest.raises(ValueError, match="discrete actions"):
        play("Pendulum-v1", client_of(FakePolicyAPI()), episodes=1)
    with pytest.raises(ValueError, match="SAME_STEP"):
        play(gym.make_vec("CartPole-v1", num_envs=2, vectorization_mode="sync"), client_of(FakePolicyAPI()))


# ---- evolve play -------------------------------------------------------------------------------------
@pytest.fixture
def served(monkeypatch):
    def serve(fake: FakePolicyAPI) -> FakePolicyAPI:
        monkeypatch.setattr(play_cli, "CLIENT_OPTIONS", {"transport": fake.transport, "sleep": lambda s: None})
        return fake

    return serve


def test_evolve_play_prints_each_episode_and_the_mean_return(served, capsys):
    fake = served(FakePolicyAPI(rule=falls_soon))
    rc = main(["play", "CartPole-v1", "--url", "http://fake:8000", "--policy", "cartpole", "--episodes", "5",
               "--num-envs", "2", "--seed", "4"])
    out = capsys.readouterr().out.splitlines()
    assert rc == 0 and len(out) == 6
    lines = [re.fullmatch(r"episode (\d+): return (\S+), length (\d+), version 7", line) for line in out[:5]]
    assert all(lines), out
    returns = [float(m.group(2)) for m in lines]
    by_length = sorted((ep.next, sum(ep.rewards.values())) for ep in fake.episodes.values())
    assert sorted((int(m.group(3)), float(m.group(2))) for m in lines) == by_length
    assert re.fullmatch(rf"5 episode\(s\), {sum(int(m.group(3)) for m in lines)} steps in \S+ s \(\d+ steps/s\); "
                        rf"mean return of the last 5: {np.mean(returns):.2f}", out[5]), out[5]


@pytest.mark.parametrize("fake, argv, reason", [
    (FakePolicyAPI(key="k"), ["--policy", "cartpole"], "401 authorization: a valid API key is needed"),
    (FakePolicyAPI(), ["--policy", "other"], "404 policy: no policy at /v1/policies/other/episodes"),
    (FakePolicyAPI(), [], "is a server root: name the policy"),
])
def test_evolve_play_exits_non_zero_with_the_clients_reason(served, capsys, fake, argv, reason):
    served(fake)
    assert main(["play", "CartPole-v1", "--url", "http://fake:8000", "--episodes", "1", *argv]) == 1
    err = capsys.readouterr().err
    assert err.startswith("evolve: error: ") and reason in err and len(err.splitlines()) == 1


def test_evolve_play_on_an_unreachable_server_says_so(monkeypatch, capsys):
    def refuse(request):
        raise httpx.ConnectError("connection refused", request=request)

    monkeypatch.setattr(play_cli, "CLIENT_OPTIONS", {"transport": httpx.MockTransport(refuse), "sleep": lambda s: None})
    assert main(["play", "CartPole-v1", "--url", "http://fake:8000/v1/policies/cartpole", "--episodes", "1"]) == 1
    assert "gave up after 6 tries; the last: unreachable (ConnectError: connection refused)" in capsys.readouterr().err


def test_evolve_play_refuses_an_unknown_env(served, capsys):
    served(FakePolicyAPI())
    assert main(["play", "NoSuchEnv-v0", "--url", "http://fake:8000", "--policy", "cartpole"]) == 1
    assert "env 'NoSuchEnv-v0'" in capsys.readouterr().err
