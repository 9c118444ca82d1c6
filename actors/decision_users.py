"""Simulated users of a served decision policy: a classification stream's rows as requests, rewarded by their class.

Each user is the next round of the stream (core/decisions/simulate.py): its context and the
classes as actions go to `rank`; the action served earns 1 when it is the row's class, else 0, and
the user sends that reward with probability `reward_share` (the others leave the decision to its
default reward).  The reward of every served action is counted as it arrives, sent or not: the
loop's live figure (overall, over a recent window and by version).

`DecisionUsersWorker` is the plain logic (threads and one httpx client); `DecisionUsersActor` is
the thin Ray shell, which waits for the app's `/healthz` before it sends.  Transient failures are
retried with backoff and counted (actors/http_retry.py).
"""

from __future__ import annotations

import random
import threading
from collections import deque
from typing import Any, Callable

import httpx
import ray

from actors.client_threads import ClientThreads, WorkerShell
from actors.crash_backoff import CrashBackoff
from actors.http_retry import RetryingPoster, bump
from core.config.decisions import DecisionUsersSection
from core.decisions.simulate import rounds


class DecisionUsersWorker(ClientThreads):
    def __init__(self, app_url: str, users: DecisionUsersSection | None = None, *, actor_id: str = "users-0",
                 seed: int = 0, recent_window: int = 500, max_retries: int = 6, timeout_s: float = 30.0,
                 transport: httpx.BaseTransport | None = None, api_key: str | None = None,
                 on_crash: Callable[[BaseException], None] | None = None, await_route: bool = False):
        self.cfg, self.actor_id, self.on_crash, self.await_route = users or DecisionUsersSection(), actor_id, on_crash, await_route
        base = app_url.rstrip("/")
        self.rank_url, self.reward_url, self.ready_url = base + "/rank", base + "/reward", base + "/healthz"
        auth = {"authorization": f"Bearer {api_key}"} if api_key else {}
        n = self.cfg.concurrency
        self.client = httpx.Client(timeout=timeout_s, transport=transport, headers=auth,
                                   limits=httpx.Limits(max_connections=2 * n, max_keepalive_connections=2 * n))
        self._rng, self._lock, self._stop = random.Random(seed), threading.Lock(), threading.Event()
        self._rounds = rounds(self.cfg.stream, self.cfg.events, seed)
        self._threads: list[threading.Thread] = []
        self._next_slot = 0.0
        self.errors: dict[str, dict[str, int]] = {"rank": {}, "reward": {}}
        self.http = RetryingPoster(self.client, self._stop, self._lock, self._rng, self.errors, max_retries=max_retries)
        self.requests = self.rank_failed = self.rewards_sent = self.reward_failed = 0
        self.reward_sum = 0.0
        self.recent: deque[float] = deque(maxlen=recent_window)
        self.by_version: dict[str, list[float]] = {}  # version -> [decisions, reward sum]
        self.model_version: Any = None
        self.last_error: str | None = None
        self.exhausted = False

    def run_requests(self, count: int) -> None:
        """`count` users, one after another, in this thread (tests and benchmarks)."""
        for _ in range(count):
            self.one_user()

    def _work(self) -> None:
        self._users("rank", lambda: not self.exhausted)

    def one_user(self) -> None:
        with self._lock:
            r = next(self._rounds, None)
            send = self._rng.random() < self.cfg.reward_share
        if r is None:
            self.exhausted = True
            return
        client = {"x-evolve-client": f"{self.actor_id}-{self._rng.randrange(1 << 30)}"}
        answer = self.http.post("rank", self.rank_url, {"context": r.context, "actions": r.actions}, client)
        if not isinstance(answer, dict) or not isinstance(answer.get("action_id"), str):
            with self._lock:
                self.rank_failed += 1
            return
        reward = r.reward(answer["action_id"])
        version = str(answer.get("model_version"))
        with self._lock:
            self.requests += 1
            self.reward_sum += reward
            self.recent.append(reward)
            counts = self.by_version.setdefault(version, [0, 0.0])
            counts[0], counts[1] = counts[0] + 1, counts[1] + reward
            self.model_version = answer.get("model_version")
        if send:
            ok = self.http.post("reward", self.reward_url, {"event_id": answer["event_id"], "reward": reward}, client)
            with self._lock:
                self.rewards_sent += ok is not None
                self.reward_failed += ok is None

    def stats(self) -> dict[str, Any]:
        with self._lock:
            return {
                "actor_id": self.actor_id, "running": self.running(), "requests": self.requests,
                "rank_failed": self.rank_failed, "rewards_sent": self.rewards_sent,
                "reward_failed": self.reward_failed, "retries": self.http.retries,
                "errors": {k: dict(v) for k, v in self.errors.items()},
                "mean_reward": self.reward_sum / self.requests if self.requests else None,
                "recent_reward": sum(self.recent) / len(self.recent) if self.recent else None,
                "by_version": {v: {"decisions": int(n), "mean_reward": s / n if n else None}
                               for v, (n, s) in self.by_version.items()},
                "model_version": self.model_version, "exhausted": self.exhausted, "last_error": self.last_error,
            }


@ray.remote(max_restarts=-1, max_concurrency=4)
class DecisionUsersActor(WorkerShell):
    """A DecisionUsersWorker; starts at once (and after a restart)."""

    def __init__(self, app_url: str, users: dict, actor_id: str, *, seed: int = 0, autostart: bool = True,
                 **kwargs: Any):
        self.worker = DecisionUsersWorker(app_url, DecisionUsersSection.model_validate(users), actor_id=actor_id,
                                          seed=seed, on_crash=CrashBackoff(actor_id).fail,
                                          **{"await_route": True, **kwargs})
        if autostart:
            self.worker.start()
