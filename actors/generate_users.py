"""Simulated users of the served generator: a prompt, its completions, feedback as a fixed judge reads them.

Each request is one user of a kind drawn by the `users` shares (core/config/generate.py):

    thumbs      asks one completion; thumbs-up with the probability p that the judge reads
                prompt + completion as positive, thumbs-down otherwise
    several     asks `several_n` completions of the prompt and rates each one so (or, with
                `several_rating: reward`, sends each one's p as its reward)
    preference  asks two; the one the judge scores higher is `better_than` the other
    reward      asks one; sends p itself as the reward

Prompts are the traffic prompts of core/data/prompts.py (openings of reviews the judge never
saw; never a held-out prompt of the gate), cycled in a seeded order.  Every served completion is
scored by the judge as it arrives: the mean judged reward of what the live versions write, the
loop's live figure (overall, over a recent window and by version).

`GenerateUsersWorker` is the plain logic (threads and one httpx client; tests give it an
httpx.MockTransport); `GenerateUsersActor` is the thin Ray shell, which waits for the app's
`/healthz` before it sends.  Transient failures are retried with backoff and counted
(actors/http_retry.py); a bug outside a request ends the actor through `CrashBackoff`
(actors/crash_backoff.py), so Ray restarts it.
"""

from __future__ import annotations

import itertools
import random
import threading
import time
from collections import deque
from typing import Any, Callable, Sequence

import httpx
import numpy as np
import ray

from actors.crash_backoff import CrashBackoff
from actors.client_threads import ClientThreads, WorkerShell
from actors.http_retry import RetryingPoster, bump
from core.config.generate import GeneratePromptsSection, GenerateUsersSection
from core.data.prompts import review_prompts
from core.models.judge import Judge, ensure_judge

KINDS = ("thumbs", "several", "preference", "reward")
FEEDBACK = ("thumbs_up", "thumbs_down", "reward", "better_than")


class GenerateUsersWorker(ClientThreads):
    def __init__(self, base_url: str, prompts: Sequence[str], judge: Judge, users: GenerateUsersSection | None = None,
                 *, actor_id: str = "users-0", seed: int = 0, generate_path: str = "/v1/generate",
                 recent_window: int = 300, max_retries: int = 6, backoff_s: float = 0.05, max_backoff_s: float = 2.0,
                 timeout_s: float = 60.0, transport: httpx.BaseTransport | None = None, api_key: str | None = None,
                 verify: str | bool = True, on_crash: Callable[[BaseException], None] | None = None,
                 await_route: bool = False):
        if not prompts:
            raise ValueError("simulated users need at least one prompt")
        self.cfg, self.judge, self.actor_id = users or GenerateUsersSection(), judge, actor_id
        self.on_crash, self.await_route = on_crash, await_route
        base = base_url.rstrip("/") + generate_path
        self.generate_url, self.feedback_url, self.ready_url = base, base + "/feedback", base + "/healthz"
        auth = {"authorization": f"Bearer {api_key}"} if api_key else {}
        n = self.cfg.concurrency
        self.client = httpx.Client(timeout=timeout_s, transport=transport, headers=auth, verify=verify,
                                   limits=httpx.Limits(max_connections=2 * n, max_keepalive_connections=2 * n))
        self._rng, self._lock, self._stop = random.Random(seed), threading.Lock(), threading.Event()
        order = list(prompts)
        random.Random(seed).shuffle(order)
        self._prompts = itertools.cycle(order)
        self.client_prefix = f"users{seed}"
        self._threads: list[threading.Thread] = []
        self._next_slot = 0.0
        # counters (under _lock)
        self.requests = self.generate_failed = self.completions = self.feedback_failed = 0
        self.users = dict.fromkeys(KINDS, 0)
        self.feedback = dict.fromkeys(FEEDBACK, 0)
        self.errors: dict[str, dict[str, int]] = {"generate": {}, "feedback": {}}
        self.http = RetryingPoster(self.client, self._stop, self._lock, self._rng, self.errors,
                                   max_retries=max_retries, backoff_s=backoff_s, max_backoff_s=max_backoff_s)
        self.reward_sum = 0.0
        self.recent: deque[float] = deque(maxlen=recent_window)
        self.by_version: dict[str, list[float]] = {}  # version -> [completions, judged reward sum]
        self.latencies: deque[float] = deque(maxlen=2000)
        self.model_version: Any = None
        self.last_error: str | None = None

    @classmethod
    def from_config(cls, base_url: str, users: GenerateUsersSection, prompts: GeneratePromptsSection, *,
                    shard: tuple[int, int] = (0, 1), seed: int = 0, **kwargs: Any) -> "GenerateUsersWorker":
        """Shard i of n of the traffic prompts (every n-th), the judge from its file (made on first use)."""
        i, n = shard
        traffic = review_prompts(**prompts.model_dump()).traffic[i::n]
        return cls(base_url, traffic, ensure_judge(users.judge_path), users, seed=seed + 7919 * i, **kwargs)

    # ---- running -------------------------------------------------------------------------------
    def run_requests(self, count: int) -> None:
        """`count` users, one after another, in this thread (tests and benchmarks)."""
        for _ in range(count):
            self.one_user()

    def _work(self) -> None:
        self._users("generate")

    # ---- one user ------------------------------------------------------------------------------
    def one_user(self) -> None:
        """A prompt, its completions, the judge's reading of them, and this kind of user's feedback."""
        with self._lock:
            prompt, kind = next(self._prompts), self._kind()
            client = f"{self.client_prefix}-u{self._rng.randrange(self.cfg.clients)}"
            self.users[kind] += 1
        n = {"several": self.cfg.several_n, "preference": 2}.get(kind, 1)
        served = self._generate(prompt, n, client)
        if served is None:
            return
        completions, version = served
        rewards = self.judge.reward([prompt] * len(completions), [c["text"] for c in completions])
        for body in self._feedback_bodies(kind, completions, rewards, version):
            self._send_feedback(body, client)

    def _kind(self) -> str:
        """The kind of this user (call under _lock: it draws from the shared rng)."""
        u, c = self._rng.random(), self.cfg
        for kind, share in (("several", c.several_share), ("preference", c.preference_share), ("reward", c.reward_share)):
            if u < share:
                return kind
            u -= share
        return "thumbs"

    def _generate(self, prompt: str, n: int, client: str) -> tuple[list[dict[str, Any]], Any] | None:
        """The n completions and the version that wrote them; None (counted) when none came."""
        body: dict[str, Any] = {"prompt": prompt, "n": n}
        if self.cfg.max_new_tokens is not None:
            body["max_new_tokens"] = self.cfg.max_new_tokens
        if self.cfg.temperature is not None:
            body["temperature"] = self.cfg.temperature
        started = time.monotonic()
        reply = self.http.post("generate", self.generate_url, body, {"x-evolve-client": client})
        completions = _completions(reply, n)
        with self._lock:
            self.requests += 1
            if reply is not None and completions is None:
                bump(self.errors["generate"], "bad_response")
            if completions is None:
                self.generate_failed += 1
                return None
            self.latencies.append(time.monotonic() - started)
            self.model_version = reply.get("model_version", self.model_version)
        return completions, reply.get("model_version")

    def _feedback_bodies(self, kind: str, completions: list[dict[str, Any]], rewards: np.ndarray,
                         version: Any) -> list[dict]:
        """What this user says about the completions (and the judged figures, counted here)."""
        with self._lock:
            self.completions += len(completions)
            counts = self.by_version.setdefault(str(version), [0, 0.0])
            for r in rewards:
                self.reward_sum += float(r)
                self.recent.append(float(r))
                counts[0] += 1
                counts[1] += float(r)
            if kind == "preference":
                best, worst = int(np.argmax(rewards)), int(np.argmin(rewards))
                worst = worst if worst != best else (best + 1) % len(completions)  # a tie: either way
                return [{"event_id": completions[best]["event_id"], "better_than": completions[worst]["event_id"]}]
            if kind == "reward" or (kind == "several" and self.cfg.several_rating == "reward"):
                return [{"event_id": c["event_id"], "reward": float(min(1.0, max(0.0, r)))}
                        for c, r in zip(completions, rewards)]
            return [{"event_id": c["event_id"], "thumbs": "up" if self._rng.random() < r else "down"}
                    for c, r in zip(completions, rewards)]

    def _send_feedback(self, body: dict[str, Any], client: str) -> None:
        ok = self.http.post("feedback", self.feedback_url, body, {"x-evolve-client": client}) is not None
        with self._lock:
            if not ok:
                self.feedback_failed += 1
            elif "thumbs" in body:
                self.feedback[f"thumbs_{body['thumbs']}"] += 1
            else:
                self.feedback["reward" if "reward" in body else "better_than"] += 1

    def stats(self) -> dict[str, Any]:
        with self._lock:
            lat = np.array(self.latencies) if self.latencies else None
            return {
                "actor_id": self.actor_id,
                "running": self.running(),
                "requests": self.requests,
                "generate_failed": self.generate_failed,
                "completions": self.completions,
                "users": dict(self.users),
                "feedback": dict(self.feedback),
                "feedback_failed": self.feedback_failed,
                "retries": self.http.retries,
                "errors": {k: dict(v) for k, v in self.errors.items()},
                # the judge's reading of what was served: the loop's live figure
                "mean_reward": self.reward_sum / self.completions if self.completions else None,
                "recent_reward": float(np.mean(self.recent)) if self.recent else None,
                "by_version": {v: {"completions": int(n), "mean_reward": s / n if n else None}
                               for v, (n, s) in self.by_version.items()},
                "model_version": self.model_version,
                "latency_p50_ms": float(np.percentile(lat, 50) * 1e3) if lat is not None else None,
                "latency_p95_ms": float(np.percentile(lat, 95) * 1e3) if lat is not None else None,
                "last_error": self.last_error,
            }


def _completions(reply: Any, n: int) -> list[dict[str, Any]] | None:
    """The n completions of a generate reply, each with an event id and a text; None for anything else."""
    items = reply.get("completions") if isinstance(reply, dict) else None
    if not isinstance(items, list) or len(items) != n:
        return None
    ok = all(isinstance(c, dict) and isinstance(c.get("event_id"), str) and isinstance(c.get("text"), str)
             for c in items)
    return items if ok else None


# ---- Ray at the edge ---------------------------------------------------------------------------
@ray.remote(max_restarts=-1, max_concurrency=4)
class GenerateUsersActor(WorkerShell):
    """A GenerateUsersWorker on shard i of the traffic prompts; starts at once (and after a restart)."""

    def __init__(self, base_url: str, users: dict, prompts: dict, actor_id: str, *, seed: int = 0,
                 shard: tuple[int, int] = (0, 1), autostart: bool = True, **kwargs: Any):
        self.worker = GenerateUsersWorker.from_config(
            base_url, GenerateUsersSection.model_validate(users), GeneratePromptsSection.model_validate(prompts),
            shard=shard, seed=seed, actor_id=actor_id, on_crash=CrashBackoff(actor_id).fail,
            **{"await_route": True, **kwargs})
        if autostart:
            self.worker.start()
