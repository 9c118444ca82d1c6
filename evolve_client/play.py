"""`play`: run a gymnasium env through a served policy, many episodes at once.

A vector env of `num_envs` copies steps in lockstep with SAME_STEP autoreset: a finished
copy's next observation already starts its next episode, and the finished episode's last
observation is in info["final_obs"]. Each vector step is one batched /act for every live
episode; a finished episode's copy goes on at once with a replacement taken from episodes
opened ahead, with ids the player makes (a named start is safe to retry), and the finished
episodes are ended together, a quarter of `num_envs` at a time (at once with fewer than four
copies) or once the first of them has waited `END_WAIT_S`, in one /episodes/end: an end is a
request of its own, so ending them one vector step at a time would double the requests when
episodes are short. Their last steps are acknowledged with that end; `play` ends what is still
pending before it returns.

Episodes are opened `num_envs` at a time, ahead of need, so at most 2 x `num_envs` are open.
With `episodes=N` it plays N episodes and returns; without, until `stop` is set. On `stop`
the episodes still running are ended as truncated after their last step (so the server keeps
every step's reward) and are not reported: only episodes the env finished are. Episodes opened
ahead and not yet played hold no step; they are left to the server's `episode_ttl_s`.
"""

from __future__ import annotations

import time
import uuid
from collections import deque
from dataclasses import dataclass, field, replace
from typing import Any, Callable, Protocol

import numpy as np

from evolve_client.policy_client import PolicyClient

END_WAIT_S = 1.0  # the longest a finished episode waits for others to be ended with (a slow env's)


class Stop(Protocol):
    def is_set(self) -> bool: ...


@dataclass(frozen=True)
class EpisodeResult:
    number: int  # 1, 2, ... in the order the episodes finished
    episode_id: str
    episode_return: float
    length: int
    terminated: bool  # else truncated by the env (a time limit)
    versions: tuple[int, ...]  # the versions that served its actions, in the order they first did

    @property
    def version(self) -> int | None:
        """The version that served every step; None when several did (or the server did not say)."""
        return self.versions[0] if len(self.versions) == 1 else None


@dataclass
class PlaySummary:
    episodes: int = 0  # finished by the env and reported
    steps: int = 0  # env steps of live episodes, each one served action
    seconds: float = 0.0
    last_returns: deque = field(default_factory=lambda: deque(maxlen=100))

    @property
    def mean_return(self) -> float | None:
        """The mean return of the last (up to) 100 episodes."""
        return float(np.mean(self.last_returns)) if self.last_returns else None

    @property
    def steps_per_s(self) -> float:
        return self.steps / self.seconds if self.seconds > 0 else 0.0


def play(env: Any, client: PolicyClient, episodes: int | None = None, num_envs: int = 1, seed: int = 0,
         on_episode: Callable[[EpisodeResult], Any] | None = None, stop: Stop | None = None) -> PlaySummary:
    """Play `episodes` episodes (None: until `stop` is set) of `env` (an id for gymnasium.make_vec,
    a SAME_STEP-autoreset vector env, or one gymnasium.Env) through `client`'s policy,
    `num_envs` at a time; `on_episode` hears of each as it finishes."""
    if episodes is not None and episodes < 1:
        raise ValueError(f"episodes must be >= 1, got {episodes}")
    if num_envs < 1:
        raise ValueError(f"num_envs must be >= 1, got {num_envs}")
    venv, owned = _vector_env(env, num_envs)
    try:
        return _Player(venv, client, episodes, on_episode, stop).run(seed)
    finally:
        if owned:
            venv.close()


class _Player:
    def __init__(self, venv: Any, client: PolicyClient, episodes: int | None,
                 on_episode: Callable[[EpisodeResult], Any] | None, stop: Stop | None):
        self.venv, self.client, self.episodes = venv, client, episodes
        self.on_episode, self.stop = on_episode, stop
        self.n = venv.num_envs
        self.ids: list[str | None] = [None] * self.n  # each env copy's episode, None when idle
        self.returns = np.zeros(self.n)
        self.lengths = np.zeros(self.n, dtype=np.int64)
        self.versions: list[list[int]] = [[] for _ in range(self.n)]
        self.prefix = f"play-{uuid.uuid4().hex[:12]}"
        self.started = 0  # episodes opened, spares included
        self.spares: deque[str] = deque()  # opened, not yet playing
        self.finished: list[tuple[EpisodeResult, Any]] = []  # (result, final observation), not yet ended
        self.end_every = max(1, self.n // 4)
        self.first_finished = 0.0  # when the oldest episode in `finished` finished
        self.summary = PlaySummary()

    def run(self, seed: int) -> PlaySummary:
        obs, _ = self.venv.reset(seed=seed)
        began = time.perf_counter()
        actions = np.zeros(self.n, dtype=np.int64)  # an idle copy steps with its last action, unheard
        self._start(list(range(self.n)))
        try:
            while True:
                live = [i for i, eid in enumerate(self.ids) if eid is not None]
                if not live:
                    self._end_finished()
                    break
                actions[live] = self.client.get_actions([self.ids[i] for i in live], obs[live])
                self._note_versions(live)
                obs, reward, terminated, truncated, info = self.venv.step(actions)
                done = self._record(live, reward, terminated, truncated)
                if done:
                    self._finish(done, info["final_obs"], terminated)
                if self._ends_due():
                    self._end_finished()
                if self.stop is not None and self.stop.is_set():
                    self._end_finished()
                    self._truncate_live(obs)
                    break
                if done:
                    self._start(done)
        finally:
            self.summary.seconds = time.perf_counter() - began
        return self.summary

    def _record(self, live: list[int], reward: np.ndarray, terminated: np.ndarray, truncated: np.ndarray) -> list[int]:
        """Each live episode's reward reported; the copies whose episode finished."""
        for i in live:
            self.client.log_returns(self.ids[i], reward[i])
        self.returns[live] += reward[live]
        self.lengths[live] += 1
        self.summary.steps += len(live)
        return [i for i in live if terminated[i] or truncated[i]]

    def _note_versions(self, live: list[int]) -> None:
        for i, version in zip(live, self.client.last_version or ()):
            if version is not None and version not in self.versions[i]:
                self.versions[i].append(version)

    def _start(self, slots: list[int]) -> None:
        for i in slots:
            if not self.spares and not self._open_spares():
                return
            self.ids[i] = self.spares.popleft()
            self.returns[i], self.lengths[i], self.versions[i] = 0.0, 0, []

    def _open_spares(self) -> bool:
        """Open the next `num_envs` episodes (fewer near `episodes`) in one request, so that a
        start request comes once per `num_envs` finished episodes, not once per vector step."""
        want = self.n if self.episodes is None else min(self.n, self.episodes - self.started)
        if want <= 0:
            return False
        ids = [f"{self.prefix}-{self.started + k}" for k in range(want)]
        self.client.start_episodes(episode_ids=ids)
        self.spares.extend(ids)
        self.started += want
        return True

    def _finish(self, done: list[int], final_obs: Any, terminated: np.ndarray) -> None:
        """The finished episodes wait for their end; their copies are free for the next ones."""
        if not self.finished:
            self.first_finished = time.monotonic()
        for i in done:
            result = EpisodeResult(0, self.ids[i], float(self.returns[i]), int(self.lengths[i]), bool(terminated[i]),
                                   tuple(self.versions[i]))
            self.finished.append((result, final_obs[i]))
            self.ids[i] = None

    def _ends_due(self) -> bool:
        return len(self.finished) >= self.end_every or (
            bool(self.finished) and time.monotonic() - self.first_finished >= END_WAIT_S)

    def _end_finished(self) -> None:
        if not self.finished:
            return
        # the env may flag both at a time limit's last step: termination wins (nothing to bootstrap)
        results = [r for r, _ in self.finished]
        self.client.end_episodes([r.episode_id for r in results], [o for _, o in self.finished],
                                 terminated=[r.terminated for r in results],
                                 truncated=[not r.terminated for r in results])
        self.finished = []
        for r in results:
            self.summary.episodes += 1
            self.summary.last_returns.append(r.episode_return)
            if self.on_episode is not None:
                self.on_episode(replace(r, number=self.summary.episodes))

    def _truncate_live(self, obs: np.ndarray) -> None:
        live = [i for i, eid in enumerate(self.ids) if eid is not None]
        if live:
            self.client.end_episodes([self.ids[i] for i in live], [obs[i] for i in live], terminated=False,
                                     truncated=True)
            for i in live:
                self.ids[i] = None


def _vector_env(env: Any, num_envs: int) -> tuple[Any, bool]:
    """(a SAME_STEP-autoreset vector env, whether `play` made it and closes it)."""
    import gymnasium as gym

    same_step = gym.vector.AutoresetMode.SAME_STEP
    if isinstance(env, str):
        venv, owned = gym.make_vec(env, num_envs=num_envs, vectorization_mode="sync",
                                   vector_kwargs={"autoreset_mode": same_step}), True
    elif isinstance(env, gym.vector.VectorEnv):
        if env.metadata.get("autoreset_mode") != same_step:
            mode = env.metadata.get("autoreset_mode")
            raise ValueError(f"the vector env must autoreset in SAME_STEP mode, not {mode}")
        if num_envs not in (1, env.num_envs):
            raise ValueError(f"num_envs={num_envs} but the vector env has {env.num_envs} copies")
        venv, owned = env, False
    elif isinstance(env, gym.Env):
        if num_envs != 1:
            raise ValueError("one env instance plays one episode at a time: pass its id (or a vector env) "
                             "for num_envs > 1")
        venv, owned = gym.vector.SyncVectorEnv([lambda: env], autoreset_mode=same_step), False
    else:
        raise TypeError(f"env must be a gymnasium env id, vector env or env, not {type(env).__name__}")
    if not isinstance(venv.single_action_space, gym.spaces.Discrete):
        if owned:
            venv.close()
        raise ValueError(f"a served policy chooses discrete actions; this env's are {venv.single_action_space}")
    return venv, owned
