"""The evaluation actor: plays each published version greedily; its mean return judges the loop.

Training episodes are epsilon-greedy and lag the learner, so they are not
what the loop is judged by.  The evaluator waits for the newest live version
(skipping versions published while it was busy), runs `eval_episodes`
episodes at once in a vector env with epsilon 0, and keeps the result.  A
version whose mean reaches `solve_return` is played again for
`confirm_episodes` episodes on other seeds: a mean over a few episodes of a
still-changing policy reaches a threshold by luck, so only the confirmed
mean says "solved".
It follows the publisher without counting as a subscriber: publish latency
is about actors and replicas, not about this judge.
With `rl.drift`, `apply_drift()` makes every later evaluation play the changed
env (core/rl/drift.py); each result says which env it played (`drifted`).
The last confirmed version stays at hand as the reference: `play_reference()`
plays it on the env as it is now, which tells a world that changed (the
reference fails too) from a learner that got worse (the reference still holds).
"""

from __future__ import annotations

import threading
import time
from typing import Any, Mapping

import gymnasium as gym
import numpy as np
import ray
import torch

from core.rl.drift import physics_wrappers
from core.models.q import PolicySpec
from core.models.q_policy import QPolicy


def greedy_returns(env_id: str, policy: QPolicy, episodes: int, seed: int,
                   physics: Mapping[str, float] | None = None) -> np.ndarray:
    """Return of the first episode of each of `episodes` envs under the greedy policy
    (on envs with `physics` set, when given)."""
    env = gym.make_vec(env_id, num_envs=episodes, vectorization_mode="sync",
                       vector_kwargs={"autoreset_mode": gym.vector.AutoresetMode.SAME_STEP},
                       wrappers=physics_wrappers(physics, shifted=True))
    try:
        obs, _ = env.reset(seed=seed)
        returns = np.zeros(episodes)
        running = np.ones(episodes, dtype=bool)
        while running.any():
            actions, _ = policy.act(np.asarray(obs, dtype=np.float32).reshape(episodes, -1))
            obs, reward, terminated, truncated, _ = env.step(actions)
            returns += np.where(running, reward, 0.0)
            running &= ~(terminated | truncated)
        return returns
    finally:
        env.close()


class Evaluator:
    """Plain logic: evaluate a (version, weights) pair; keeps every result."""

    def __init__(self, env_id: str, spec: PolicySpec, episodes: int, seed: int = 10_000,
                 solve_return: float | None = None, confirm_episodes: int = 100,
                 drift: Mapping[str, float] | None = None):
        self.env_id, self.episodes, self.seed = env_id, episodes, seed
        self.solve_return, self.confirm_episodes = solve_return, confirm_episodes
        self.policy = QPolicy(spec)
        self.results: list[dict[str, Any]] = []
        self.drift = dict(drift) if drift else None  # what apply_drift sets
        self.physics: dict[str, float] | None = None  # set on the envs evaluations play
        self.reference: tuple[int, Mapping[str, Any]] | None = None  # the last confirmed (version, weights)
        self._reference_policy = QPolicy(spec)  # its own model: the follower thread loads the other one

    def apply_drift(self) -> None:
        if self.drift is None:
            raise ValueError("rl.drift is not configured: there is no change to apply")
        self.physics = self.drift

    def evaluate(self, version: int, weights: dict[str, Any]) -> dict[str, Any]:
        self.policy.load(weights, version)
        started = time.time()
        physics = self.physics  # one env for the whole evaluation, also when a drift comes meanwhile
        returns = greedy_returns(self.env_id, self.policy, self.episodes, self.seed, physics)
        result = {
            "version": version,
            "eval_return": float(returns.mean()),
            "eval_return_min": float(returns.min()),
            "episodes": self.episodes,
            **({"drifted": physics is not None} if self.drift else {}),
        }
        if self.solve_return is not None and returns.mean() >= self.solve_return:
            confirm = greedy_returns(self.env_id, self.policy, self.confirm_episodes,
                                     self.seed + self.episodes, physics)  # seeds the first eval did not use
            result.update(confirm_return=float(confirm.mean()), confirm_episodes=self.confirm_episodes,
                          confirmed=bool(confirm.mean() >= self.solve_return))
            if result["confirmed"]:
                self.reference = (version, weights)
        result.update(eval_s=round(time.time() - started, 3), time=time.time())
        self.results.append(result)
        return result

    def play_reference(self, episodes: int) -> dict[str, Any] | None:
        """The reference version's greedy mean return on the env as it is now; None before any
        version was confirmed.  Seeds differ from the evaluations': a fresh draw of the world."""
        if self.reference is None:
            return None
        version, weights = self.reference
        self._reference_policy.load(weights, version)
        physics = self.physics
        returns = greedy_returns(self.env_id, self._reference_policy, episodes, self.seed + 7_919, physics)
        return {"version": version, "eval_return": float(returns.mean()), "episodes": episodes,
                **({"drifted": physics is not None} if self.drift else {})}


@ray.remote(num_cpus=0.25, max_restarts=-1)
class EvaluatorActor:
    """Follows the policy source in a thread; `results()` hands over what is new."""

    def __init__(self, env_id: str, spec: dict, episodes: int, source: Any, seed: int = 10_000,
                 solve_return: float | None = None, confirm_episodes: int = 100,
                 drift: Mapping[str, float] | None = None):
        torch.set_num_threads(1)
        self.evaluator = Evaluator(env_id, PolicySpec.from_dict(spec), episodes, seed, solve_return,
                                   confirm_episodes, drift)
        self.source = source
        self._given = 0
        self._error: str | None = None
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._loop, daemon=True, name="evaluator")
        self._thread.start()

    def _loop(self) -> None:
        try:
            while not self._stop.is_set():
                update = self.source.wait(timeout_s=2.0)
                if update is not None:
                    self.evaluator.evaluate(*update)
        except Exception as exc:  # surfaced through results(); the driver reports it
            self._error = f"{type(exc).__name__}: {exc}"

    def results(self) -> dict[str, Any]:
        new = self.evaluator.results[self._given :]
        self._given += len(new)
        return {"results": new, "error": self._error}

    def apply_drift(self) -> None:
        """Later evaluations play the changed env (a restart forgets it: the driver asks again)."""
        self.evaluator.apply_drift()

    def play_reference(self, episodes: int) -> dict[str, Any] | None:
        return self.evaluator.play_reference(episodes)

    def stop(self) -> None:
        self._stop.set()
        self._thread.join(timeout=30)
