"""`/act` clients: simulated users of a served RL policy, the gate's live evidence.

Each of `episodes_at_once` slots plays an episode of the env, asking POST
/v1/policies/<id>/act for every action: one batched request per step for all
slots, each row under its episode's client key (drawn from `clients` keys,
so a canary keeps a client on one side).  A finished episode goes to the
gate with what was logged at every step: observation, served action, its
propensity and the reward, and the version that answered (None when a
version change fell inside the episode).  These episodes never enter the
replay store: the learner does not train on what the gate judges by.

`ActClientWorker` is the plain logic (a thread and one httpx client; tests
give it an httpx.MockTransport); `ActClientActor` is the thin Ray shell.
503 (no live version yet), 429 and 5xx answers and dropped connections are
retried with a growing pause and counted.  Anything else ends the episode
loop: the actor then exits through `CrashBackoff` (actors/crash_backoff.py) so Ray
restarts it.
"""

from __future__ import annotations

import random
import threading
import time
from collections import deque
from typing import Any, Callable

import gymnasium as gym
import httpx
import numpy as np
import ray

from actors.crash_backoff import RETRY_STATUS, CrashBackoff
from core.config.rl_gate import ActTrafficSection


class ActClientWorker:
    def __init__(self, act_url: str, env_id: str, cfg: ActTrafficSection, send: Callable[[dict], None],
                 name: str = "act", transport: httpx.BaseTransport | None = None, timeout_s: float = 10.0,
                 api_key: str | None = None,  # serving.auth: the run's proxy key, each user named per request
                 verify: str | bool = True,  # serving.tls: the CA file the proxy's certificate is checked against
                 on_crash: Callable[[BaseException], None] | None = None):  # the loop's end: the actor's CrashBackoff
        self.url, self.cfg, self.send, self.name = act_url, cfg, send, name
        self.n = cfg.episodes_at_once
        self.env = gym.make_vec(env_id, num_envs=self.n, vectorization_mode="sync",
                                vector_kwargs={"autoreset_mode": gym.vector.AutoresetMode.SAME_STEP})
        auth = {"authorization": f"Bearer {api_key}"} if api_key else {}
        self.client = httpx.Client(timeout=timeout_s, transport=transport, headers=auth, verify=verify)
        self.rng = random.Random(cfg.seed)
        self.keys = [self._key() for _ in range(self.n)]
        self.logs: list[dict[str, list]] = [self._empty() for _ in range(self.n)]
        self.counts = {"requests": 0, "episodes": 0, "retries": 0, "failed": 0}
        self.returns: deque[float] = deque(maxlen=100)
        self.error: str | None = None
        self.on_crash = on_crash
        self._stop = threading.Event()
        self._thread: threading.Thread | None = None

    def _key(self) -> str:
        return f"{self.name}-client-{self.rng.randrange(self.cfg.clients)}"

    def _user(self) -> str:
        """The header's user: the one episode's sticky key, or the worker for a batch (rows name theirs in `clients`)."""
        return self.keys[0] if self.n == 1 else self.name

    @staticmethod
    def _empty() -> dict[str, list]:
        return {"obs": [], "actions": [], "propensities": [], "rewards": [], "versions": []}

    # ---- running -----------------------------------------------------------------------------
    def start(self) -> None:
        self._thread = threading.Thread(target=self._run, name=f"{self.name}-act", daemon=True)
        self._thread.start()

    def stop(self, timeout_s: float = 10.0) -> None:
        self._stop.set()
        if self._thread is not None:
            self._thread.join(timeout_s)

    def _run(self) -> None:
        try:
            obs, _ = self.env.reset(seed=self.cfg.seed)
            gap = 1.0 / self.cfg.max_requests_per_s
            while not self._stop.is_set():
                started = time.monotonic()
                answer = self._ask(obs)
                if answer is not None:
                    obs = self._step(obs, answer)
                self._stop.wait(max(0.0, gap - (time.monotonic() - started)))
        except Exception as exc:  # the stats say why; the loop reports it
            self.error = f"{type(exc).__name__}: {exc}"
            if self.on_crash is not None:
                self.on_crash(exc)
        finally:
            self.env.close()

    def _ask(self, obs: np.ndarray) -> dict | None:
        body = {"obs": np.asarray(obs, dtype=np.float64).reshape(self.n, -1).tolist(), "clients": self.keys}
        pause = 0.2
        while not self._stop.is_set():
            try:
                reply = self.client.post(self.url, json=body, headers={"x-evolve-client": self._user()})
                self.counts["requests"] += 1
                if reply.status_code == 200:
                    return reply.json()
                if reply.status_code not in RETRY_STATUS:
                    self.counts["failed"] += 1
                    raise RuntimeError(f"/act answered {reply.status_code}: {reply.text[:200]}")
            except httpx.TransportError:
                pass
            self.counts["retries"] += 1
            self._stop.wait(pause)
            pause = min(pause * 2, 5.0)
        return None

    def _step(self, obs: np.ndarray, answer: dict) -> np.ndarray:
        actions = np.asarray(answer["action"], dtype=np.int64)
        versions = answer["version"] if isinstance(answer["version"], list) else [answer["version"]] * self.n
        nxt, reward, terminated, truncated, _ = self.env.step(actions)
        for i in range(self.n):
            log = self.logs[i]
            log["obs"].append(np.asarray(obs[i], dtype=np.float64).ravel().tolist())
            log["actions"].append(int(actions[i]))
            log["propensities"].append(float(answer["propensity"][i]))
            log["rewards"].append(float(reward[i]))
            log["versions"].append(int(versions[i]))
            if terminated[i] or truncated[i]:  # SAME_STEP autoreset: nxt[i] already starts the next episode
                self._finish(i)
        return nxt

    def _finish(self, i: int) -> None:
        log, key = self.logs[i], self.keys[i]
        self.logs[i], self.keys[i] = self._empty(), self._key()
        versions = set(log.pop("versions"))
        episode = {**log, "version": versions.pop() if len(versions) == 1 else None, "client": key}
        self.counts["episodes"] += 1
        self.returns.append(sum(log["rewards"]))
        self.send(episode)

    def stats(self) -> dict[str, Any]:
        return {**self.counts, "mean_return": float(np.mean(self.returns)) if self.returns else None,
                "error": self.error}


@ray.remote(num_cpus=0, max_restarts=-1)
class ActClientActor:
    """Plays episodes through `/act` and hands each to the gate as evidence (fire-and-forget, at most 32 in flight)."""

    def __init__(self, act_url: str, env_id: str, traffic: dict, gate: Any, policy_id: str, name: str = "act",
                 api_key: str | None = None, verify: str | bool = True):
        self.gate, self.policy_id = gate, policy_id
        self.inflight: list = []
        self.worker = ActClientWorker(act_url, env_id, ActTrafficSection.model_validate(traffic), self._send, name,
                                     api_key=api_key, verify=verify, on_crash=CrashBackoff(f"act-{name}").fail)
        self.worker.start()

    def _send(self, episode: dict) -> None:
        self.inflight.append(self.gate.evidence.remote(self.policy_id, [{"type": "episode", **episode}]))
        if len(self.inflight) >= 32:
            _, self.inflight = ray.wait(self.inflight, num_returns=16)

    def stats(self) -> dict[str, Any]:
        return self.worker.stats()

    def stop(self) -> None:
        self.worker.stop()
