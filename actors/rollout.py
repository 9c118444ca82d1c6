"""Rollout actors: a gymnasium vector env, the current policy, transitions into the replay store.

`RolloutWorker` is the plain logic (a unit test drives it with a list as the
writer); `RolloutActor` is the Ray shell that runs it in a loop.  An actor
gets a replay writer and a policy source, never a learner: it switches to a
new policy version on its next step after the source reports one.  The loop's
drift watch changes its envs' physics (`apply_drift`), boosts its epsilon for
a while and takes its finished episodes' returns (core/rl/drift.py).

A loop that raises would leave a live actor that never steps again, so the
actor exits through `CrashBackoff` (actors/crash_backoff.py: log, growing pause,
hard exit) and Ray's `max_restarts=-1` starts it afresh.
"""

from __future__ import annotations

import logging
import threading
import time
import uuid
from collections import deque
from typing import Any, Callable, Mapping, Protocol

import gymnasium as gym
import numpy as np
import pyarrow as pa
import pyarrow.compute as pc
import ray
import torch
from ray.util import metrics

from actors.nstep import NStep
from actors.crash_backoff import CrashBackoff
from core.replay.table import ReplayTimeout
from core.config.rl import RLSection
from core.rl.drift import EpsilonBoost, physics_wrappers
from core.models.q import PolicySpec, obs_width
from core.models.q_policy import QPolicy
from core.data.schemas import transitions_schema

log = logging.getLogger(__name__)


class Writer(Protocol):
    def add(self, table: str, batch: Any, timeout_s: float | None = None) -> Any: ...


class PolicySource(Protocol):
    def poll(self) -> tuple[int, dict[str, Any]] | None: ...  # a newer (version, weights), else None
    def ack(self, version: int) -> None: ...  # "this subscriber now runs `version`"


def make_vec_env(env_id: str, num_envs: int, seed: int,
                 physics: Mapping[str, float] | None = None) -> gym.vector.VectorEnv:
    # SAME_STEP autoreset: a finished env resets inside the same step and its last
    # observation comes back in info["final_obs"], so every step is a real transition.
    # `physics`: each sub-env is wrapped in a PhysicsShift that `env.call("shift")` applies.
    env = gym.make_vec(env_id, num_envs=num_envs, vectorization_mode="sync",
                       vector_kwargs={"autoreset_mode": gym.vector.AutoresetMode.SAME_STEP},
                       wrappers=physics_wrappers(physics))
    env.reset(seed=seed)
    return env


class _NumpyQ:
    """The QNetwork's forward pass in numpy, on C-contiguous copies of the model's parameters.

    For the tiny MLPs and batches of a rollout (CartPole: [num_envs, 4] -> 128 -> 128 -> 2) torch's
    per-op dispatch costs several times the arithmetic; numpy on the same float32
    weights gives the same Q-values (to rounding) in a fraction of the time.  The
    weights are copied transposed and C-contiguous (a transposed view of
    torch's [out, in] layout makes numpy's matmul markedly slower at these sizes), so
    the caller rebuilds on every new version (RolloutWorker keys it by version).
    `build` returns None for anything but a plain
    Linear/ReLU stack on Box observations; the caller then uses QPolicy.act.
    """

    def __init__(self, layers: list[tuple[np.ndarray, np.ndarray]]):
        self.layers = layers

    @classmethod
    def build(cls, policy: QPolicy) -> "_NumpyQ | None":
        net = getattr(policy.model, "net", None)
        if policy.spec.kind != "dqn" or policy.spec.discrete_obs or not isinstance(net, torch.nn.Sequential):
            return None
        mods = list(net)
        linears = mods[0::2]
        if not all(isinstance(m, torch.nn.Linear) for m in linears) or \
                not all(isinstance(m, torch.nn.ReLU) for m in mods[1::2]) or len(mods) % 2 == 0:
            return None
        if any(m.weight.dtype != torch.float32 or m.bias is None for m in linears):
            return None
        return cls([(np.ascontiguousarray(m.weight.detach().numpy().T), m.bias.detach().numpy().copy()) for m in linears])

    def q_values(self, obs: np.ndarray) -> np.ndarray:
        x = obs
        last = len(self.layers) - 1
        for i, (w, b) in enumerate(self.layers):
            x = x @ w
            x += b
            if i < last:
                np.maximum(x, 0.0, out=x)
        return x


class WriteSize:
    """Vector steps per replay add, between `lo` and `hi`.

    Each add has a fixed cost to the actor whatever its size, so big adds are cheap per
    row; but when the store's rate limiter paces the actor (a learner that is
    slower than its actors: the usual case), a big add means the learner trains
    on rows a policy hundreds of updates old acted.  So: when the last add was
    held back longer than stepping it took, halve the size (the actor waits
    either way, smaller adds cost it nothing); when it came back in under a
    quarter of that, double it.  In between, keep it.
    """

    def __init__(self, lo: int, hi: int):
        self.lo, self.hi, self.now = lo, hi, hi

    def update(self, step_s: float, wait_s: float) -> int:
        if wait_s > step_s:
            self.now = max(self.lo, self.now // 2)
        elif wait_s < 0.25 * step_s:
            self.now = min(self.hi, self.now * 2)
        return self.now


class RolloutWorker:
    def __init__(self, cfg: RLSection, spec: PolicySpec, actor_id: str, writer: Writer,
                 source: PolicySource | None = None, seed: int = 0):
        torch.set_num_threads(1)  # many small forward passes: threads only add overhead
        self.cfg, self.spec, self.writer, self.source = cfg, spec, writer, source
        self.actor_id = actor_id
        self.incarnation = uuid.uuid4().hex[:8]  # row ids stay unique across actor restarts
        self.env = make_vec_env(cfg.env_id, cfg.acting.num_envs, seed, cfg.drift.set if cfg.drift.enabled else None)
        self.drifted_at: int | None = None  # own env steps when the physics changed
        self.boost: EpsilonBoost | None = None
        self.obs = self._shape(self.env.reset(seed=seed)[0])
        self.policy = QPolicy(spec)
        self._fast_q: _NumpyQ | None = None
        self._fast_key: tuple[int, int] | None = None
        self.rng = np.random.default_rng(seed)
        self.nstep = NStep(cfg.learning.n_step, cfg.learning.gamma)
        self.schema = transitions_schema(obs_width(spec))
        self.env_steps = self.episodes = self.rows_written = 0
        self.last_batch: pa.RecordBatch | None = None
        self.episode_return = np.zeros(cfg.acting.num_envs)
        self.episode_len = np.zeros(cfg.acting.num_envs, dtype=np.int64)
        self.recent_returns: deque[float] = deque(maxlen=100)
        self.recent_lengths: deque[int] = deque(maxlen=100)
        # (own env steps, return) of each finished episode until `drain_returns` takes them
        self.finished: deque[tuple[int, float]] = deque(maxlen=10_000)

    def _shape(self, obs: np.ndarray) -> np.ndarray:
        return np.asarray(obs, dtype=np.float32).reshape(self.cfg.acting.num_envs, -1)

    def maybe_switch_policy(self) -> bool:
        update = self.source.poll() if self.source is not None else None
        if update is None:
            return False
        version, weights = update
        self.policy.load(weights, version)
        self.source.ack(version)
        return True

    def run(self, vector_steps: int) -> int:
        """Step every env `vector_steps` times, then write the transitions; returns rows written."""
        if vector_steps < 1:
            return 0
        steps = []  # per vector step: obs, actions, reward, obs after, terminated, truncated
        versions = np.empty(vector_steps, np.int64)  # the version that chose each step's actions
        for t in range(vector_steps):
            self.maybe_switch_policy()
            versions[t] = self.policy.version
            actions = self._act(self.epsilon())
            raw_next, reward, terminated, truncated, info = self.env.step(actions)
            next_obs = self._shape(raw_next)
            done = terminated | truncated
            after = next_obs.copy()
            if done.any():
                final = info["final_obs"]
                for i in np.flatnonzero(done):
                    after[i] = np.asarray(final[i], dtype=np.float32).reshape(-1)
            steps.append((self.obs, actions, reward, after, terminated, truncated))
            self._track(reward, done)
            self.obs = next_obs
        # n-step returns for the whole write at once: the same rows, in the same order,
        # that a push per step gives, for a fraction of the numpy calls
        obs, act, rew, nxt, term, trunc = (np.stack(col) for col in zip(*steps))
        out = self.nstep.push_many(obs, act, rew.astype(np.float32), nxt, term, trunc, tags=versions)
        if out is None:
            return 0
        batch = self._batch(out)
        self.writer.add(self.cfg.table, batch)
        self.last_batch = batch  # sent again if the store times it out (same ids: stored once)
        self.rows_written += batch.num_rows
        return batch.num_rows

    def resend(self) -> None:
        """Send the last batch again (its add timed out; ids make a duplicate harmless)."""
        if self.last_batch is not None:
            self.writer.add(self.cfg.table, self.last_batch)

    def _act(self, eps: float) -> np.ndarray:
        """QPolicy.act's epsilon-greedy actions (same draws from self.rng), computed faster:
        numpy inference where the model allows it, and none when every env explores."""
        key = (id(self.policy.model), self.policy.version)
        if key != self._fast_key:
            self._fast_q, self._fast_key = _NumpyQ.build(self.policy), key
        if self._fast_q is None:
            return self.policy.act(self.obs, eps, self.rng)[0]
        n = len(self.obs)
        if eps > 0:
            explore = self.rng.random(n) < eps
            random_actions = self.rng.integers(0, self.spec.n_actions, n)
            if explore.all():
                return random_actions.astype(np.int64)
            greedy = self._fast_q.q_values(self.obs).argmax(axis=1)
            return np.where(explore, random_actions, greedy).astype(np.int64)
        return self._fast_q.q_values(self.obs).argmax(axis=1).astype(np.int64)

    def _track(self, reward: np.ndarray, done: np.ndarray) -> None:
        self.env_steps += self.cfg.acting.num_envs
        self.episode_return += reward
        self.episode_len += 1
        for i in np.flatnonzero(done):
            self.recent_returns.append(float(self.episode_return[i]))
            self.recent_lengths.append(int(self.episode_len[i]))
            self.finished.append((self.env_steps, float(self.episode_return[i])))
            self.episodes += 1
        self.episode_return[done] = 0.0
        self.episode_len[done] = 0

    def _batch(self, rows: tuple[np.ndarray, ...]) -> pa.RecordBatch:
        obs, act, rew, nxt, term, trunc, discount, version = rows
        n, width = len(act), obs.shape[1]
        start = self.rows_written
        ts = pa.array(np.full(n, time.time_ns() // 1000, dtype=np.int64)).cast(pa.timestamp("us", tz="UTC"))
        # ids "<actor>-<incarnation>-<row>" and the constant string columns built in
        # Arrow, not per row in Python: a Python loop over thousands of rows per add is slow
        seq = pc.cast(pa.array(np.arange(start, start + n, dtype=np.int64)), pa.string())
        ids = pc.binary_join_element_wise(f"{self.actor_id}-{self.incarnation}-", seq, "")
        return pa.RecordBatch.from_arrays(
            [
                ids, _repeat(self.cfg.table, n), _repeat("rollout", n), _repeat(self.actor_id, n),
                _repeat(self.cfg.policy_id, n), pa.array(version.astype(np.int64)), ts,
                pa.FixedSizeListArray.from_arrays(pa.array(obs.reshape(-1)), width),
                pa.array(act.astype(np.int64)), pa.array(rew.astype(np.float32)),
                pa.FixedSizeListArray.from_arrays(pa.array(nxt.reshape(-1).astype(np.float32)), width),
                pa.array(term.astype(bool)), pa.array(trunc.astype(bool)), pa.nulls(n, pa.float32()),
                pa.array(discount.astype(np.float32)),
            ],
            schema=self.schema,
        )

    def stats(self) -> dict[str, Any]:
        return {
            "actor_id": self.actor_id,
            "incarnation": self.incarnation,
            "env_steps": self.env_steps,
            "episodes": self.episodes,
            "rows_written": self.rows_written,
            "policy_version": self.policy.version,
            "mean_return": float(np.mean(self.recent_returns)) if self.recent_returns else None,
            "mean_length": float(np.mean(self.recent_lengths)) if self.recent_lengths else None,
            "epsilon": self.epsilon(),
            "drifted": self.drifted_at is not None,
        }

    # ---- drift and the adaptive layer's answer -----------------------------------------
    def epsilon(self) -> float:
        step = self.env_steps // self.cfg.acting.num_envs
        return self.boost.at(self.cfg.acting.epsilon, step) if self.boost else self.cfg.acting.epsilon.at(step)

    def boost_epsilon(self, value: float, steps: int) -> None:
        """Epsilon restarts at `value` and is back at the schedule's end after `steps` vector steps."""
        self.boost = EpsilonBoost(self.env_steps // self.cfg.acting.num_envs, value, steps)

    def apply_drift(self) -> int:
        """Change every env's physics to `rl.drift.set` (once); returns own env steps at the change."""
        if not self.cfg.drift.enabled:
            raise ValueError("rl.drift is not configured: there is no change to apply")
        if self.drifted_at is None:
            self.env.call("shift")
            self.drifted_at = self.env_steps
        return self.drifted_at

    def drain_returns(self) -> list[tuple[int, float]]:
        """(own env steps, return) of the episodes finished since the last call, oldest first."""
        out = []
        while self.finished:  # popleft is safe against the stepping thread's appends
            out.append(self.finished.popleft())
        return out


def _repeat(text: str, n: int) -> pa.StringArray:
    """`pa.array([text] * n)` without the Python list: offsets and one data buffer."""
    data = text.encode()
    offsets = np.arange(n + 1, dtype=np.int32) * np.int32(len(data))
    return pa.StringArray.from_buffers(n, pa.py_buffer(offsets), pa.py_buffer(data * n))


@ray.remote(max_restarts=-1, max_concurrency=4)
class RolloutActor:
    """Runs a RolloutWorker in a loop from the moment it starts (and again after a restart)."""

    def __init__(self, cfg: dict, spec: dict, actor_id: str, writer: Writer, source: PolicySource | None, seed: int,
                 on_crash: Callable[[BaseException], None] | None = None):  # tests: the exit to expect
        self._on_crash = on_crash or CrashBackoff(f"rollout-{actor_id}").fail
        self.worker = RolloutWorker(RLSection.model_validate(cfg), PolicySpec.from_dict(spec), actor_id, writer, source, seed)
        tags = {"actor": actor_id}
        self._steps = metrics.Counter("evolve_rollout_env_steps", "env steps taken (steps)", tag_keys=("actor",))
        self._return = metrics.Gauge("evolve_rollout_episode_return", "mean return of recent episodes (episode return)", tag_keys=("actor",))
        self._version = metrics.Gauge("evolve_rollout_policy_version", "policy version acting (version number)", tag_keys=("actor",))
        self._tags = tags
        rl = self.worker.cfg
        self._write_size = WriteSize(rl.acting.min_steps_per_write or rl.acting.steps_per_write, rl.acting.steps_per_write)
        self._stop = threading.Event()
        self._error: str | None = None
        self._write_timeouts = 0  # adds the rate limiter held past replay.add_timeout_s
        self._thread = threading.Thread(target=self._loop, daemon=True, name=f"rollout-{actor_id}")
        self._thread.start()

    def _loop(self) -> None:
        w = self.worker
        flush = getattr(w.writer, "flush", None)
        size = self._write_size
        try:
            while not self._stop.is_set():
                before, t0 = w.env_steps, time.perf_counter()
                w.run(size.now)
                t1 = time.perf_counter()
                # Wait for the store to take this batch before stepping on: when the rate
                # limiter holds adds back, rows queued behind it would be acted by a policy
                # many versions old by the time the learner sees them (a few queued large
                # adds are many seconds of learner consumption).  Costs one shard ack per batch.
                # How long the store held it sets the next batch's size (WriteSize).
                if flush is not None:
                    if not self._settle(flush):
                        break  # stopped while the store held the batch back
                    size.update(t1 - t0, time.perf_counter() - t1)
                self._steps.inc(w.env_steps - before, tags=self._tags)
                if w.recent_returns:
                    self._return.set(float(np.mean(w.recent_returns)), tags=self._tags)
                self._version.set(w.policy.version, tags=self._tags)
        except Exception as exc:  # a stalled actor looks alive to Ray: exit for a restart
            self._error = f"{type(exc).__name__}: {exc}"
            self._on_crash(exc)

    def _settle(self, flush: Callable[[], Any]) -> bool:
        """Wait until the last batch is stored (True) or the actor is stopped (False).

        An add the rate limiter held past replay.add_timeout_s (the learner is behind, or not up
        yet) is counted and sent again after a growing pause: the rows are kept, the shard's
        threads are let go meanwhile, and the actor does not exit for it."""
        streak = 0
        while True:
            try:
                flush()
                return True
            except ReplayTimeout as exc:
                streak += 1
                self._write_timeouts += 1
                pause = min(2 ** streak, 30)
                log.warning("rollout %s: replay add timed out (%s); sending it again in %ds",
                            self.worker.actor_id, exc, pause)
                if self._stop.wait(pause):
                    return False
                self.worker.resend()

    def stats(self) -> dict[str, Any]:
        return {**self.worker.stats(), "steps_per_write": self._write_size.now, "error": self._error,
                "running": self._thread.is_alive(), "write_timeouts": self._write_timeouts}

    def apply_drift(self) -> int:
        return self.worker.apply_drift()

    def boost_epsilon(self, value: float, steps: int) -> None:
        self.worker.boost_epsilon(value, steps)

    def drain_returns(self) -> list[tuple[int, float]]:
        return self.worker.drain_returns()

    def stop(self) -> None:
        self._stop.set()
        self._thread.join(timeout=30)
        if hasattr(self.worker.writer, "flush"):
            self.worker.writer.flush()

    def pid(self) -> int:
        import os

        return os.getpid()
