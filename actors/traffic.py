"""Traffic actors: simulated users of the live classifier, through the real HTTP endpoint.

A user sends a text to POST /v1/predict, reads the answer, and a little later
(uniform in `feedback_delay_s`) tells the service how it went on POST
/v1/feedback: with probability `p_label` the label they believe is right,
otherwise only whether the answer was right (reward 1.0 / 0.0).  What they
believe is the true label, flipped with probability `label_noise` (careless
users) or always (`poison`, an adversary: the gate must stop what it teaches).

Texts (or text pairs, actors/pair_traffic.py) come only from the traffic split of `core.data.labeled` (`from_data`),
never from the held-out rows the gate scores on.  The served answers are
scored against the true label as they arrive: prequential accuracy, the live
figure of the loop (by model version and over a recent window).  It counts an
input only the first time this worker sends it: a stream that repeats its rows
brings back inputs whose feedback the served version may have been trained on,
and an answer to those measures memory, not learning.  Repeats are scored
apart (`repeat_accuracy`).

`TrafficWorker` is the plain logic (threads + one httpx client; tests give it
an httpx.MockTransport); `TrafficActor` (actors/traffic_actor.py) is its thin Ray
shell, which may start before its loop's app: it sends once the proxy routes the
predict path.
Transient failures (503 while replicas swap or restart, 429, 502/504, refused
or dropped connections) are retried with jittered exponential backoff and
counted (actors/http_retry.py); nothing a server does stops the actor.  A bug in a user thread ends
the actor through `CrashBackoff` (actors/crash_backoff.py), so Ray restarts it.
"""

from __future__ import annotations

import heapq
import itertools
import logging
import random
import threading
import time
import uuid
from collections import deque
from typing import Any, Callable, Iterator, Literal, Sequence

import httpx
import numpy as np

from actors.client_threads import ClientThreads
from actors.http_retry import RetryingPoster, bump as _bump
from actors.pair_traffic import predict_body
from core.config.data import TrafficSection
from core.data.labeled import LabeledData, ordered_index

log = logging.getLogger(__name__)


class TrafficWorker(ClientThreads):
    def __init__(
        self,
        base_url: str,
        rows: Sequence[tuple[str, int]],
        labels: Sequence[str],
        traffic: TrafficSection | None = None,
        *,
        actor_id: str = "traffic-0",
        seed: int = 0,
        poison: bool = False,
        label_format: Literal["name", "id"] = "name",  # how a label is sent as feedback
        repeat: bool = True,  # cycle through the rows forever (a live stream); False: one pass
        max_retries: int = 6,
        backoff_s: float = 0.05,
        max_backoff_s: float = 2.0,
        timeout_s: float = 10.0,
        predict_path: str = "/v1/predict",
        feedback_path: str = "/v1/feedback",
        recent_window: int = 300,
        transport: httpx.BaseTransport | None = None,  # tests: httpx.MockTransport
        groups: Sequence[str] | None = None,  # per row: its group, reported as the stream's position
        api_key: str | None = None,  # serving.auth: the run's proxy key; each simulated user is named
        verify: str | bool = True,  # serving.tls: the CA file the proxy's certificate is checked against
        on_crash: Callable[[BaseException], None] | None = None,  # a user thread's bug: the actor's CrashBackoff
        await_route: bool = False,  # send nothing until the predict path is routed (or ready_path answers 200)
        ready_path: str | None = None,
    ):
        self.cfg = traffic or TrafficSection()
        if not rows:
            raise ValueError("traffic needs at least one row")
        self.rows, self.labels = list(rows), list(labels)
        self.groups = list(groups) if groups is not None else None
        if self.groups is not None and len(self.groups) != len(self.rows):
            raise ValueError("groups must name one group per row")
        self.actor_id, self.poison, self.label_format, self.repeat = actor_id, poison, label_format, repeat
        self.on_crash, self.await_route = on_crash, await_route
        self.max_retries, self.backoff_s, self.max_backoff_s = max_retries, backoff_s, max_backoff_s
        self.incarnation = uuid.uuid4().hex[:8]
        self._index = {name: i for i, name in enumerate(self.labels)}
        base = base_url.rstrip("/")
        self.predict_url, self.feedback_url = base + predict_path, base + feedback_path
        self.ready_url = base + ready_path if ready_path else None
        n = self.cfg.concurrency
        auth = {"authorization": f"Bearer {api_key}"} if api_key else {}
        self.client = httpx.Client(timeout=timeout_s, transport=transport, headers=auth, verify=verify,
                                   limits=httpx.Limits(max_connections=2 * n, max_keepalive_connections=2 * n))
        self._rng = random.Random(seed)
        self.client_prefix = f"traffic{seed}"
        self._lock = threading.Lock()
        self._stop = threading.Event()
        self._threads: list[threading.Thread] = []
        order = range(len(self.rows))
        self._stream: Iterator[int] = itertools.cycle(order) if repeat else iter(order)
        self.rows_taken, self.group = 0, None  # where the stream is
        self._exhausted = False
        self._pending: list[tuple[float, int, dict[str, Any], str]] = []  # feedback: (due, seq, payload, client)
        self._seq = itertools.count()
        self._next_slot = 0.0  # rate limit: when the next predict request may start
        # counters (under _lock)
        self.predict_requests = self.predicts = self.feedbacks = self.feedback_labels = self.feedback_rewards = 0
        self.predict_failed = self.feedback_failed = self.scored = self.correct = 0  # scored: first sight only
        self.repeat_scored = self.repeat_correct = 0
        self._seen: set[int] = set()  # hashes of the inputs this worker has sent (first sight)
        self.errors: dict[str, dict[str, int]] = {"predict": {}, "feedback": {}}
        self.http = RetryingPoster(self.client, self._stop, self._lock, self._rng, self.errors, max_retries=max_retries,
                                   backoff_s=backoff_s, max_backoff_s=max_backoff_s)
        self.by_version: dict[str, list[int]] = {}  # model_version -> [served, first sight, correct of those]
        self.recent: deque[tuple[bool, bool]] = deque(maxlen=recent_window)  # (first sight, right) per answer
        self.latencies: deque[float] = deque(maxlen=2000)
        self.model_version: Any = None
        self.last_error: str | None = None

    @classmethod
    def from_data(cls, base_url: str, data: LabeledData, traffic: TrafficSection | None = None, *,
                  order: Literal["shuffled", "as_is", "grouped"] = "shuffled", seed: int = 0,
                  shard: tuple[int, int] = (0, 1), group_order: list[str] | None = None,
                  group_rows: int | None = None, **kwargs: Any) -> "TrafficWorker":
        """The traffic split only (shard i of n: every n-th row), never a held-out text."""
        i, n = shard
        held = {t for t, _ in data.heldout}
        picked = [j for j in ordered_index(data, order, seed, group_order, group_rows)[i::n] if data.train[j][0] not in held]
        groups = [data.groups[j] for j in picked] if data.groups is not None else None
        return cls(base_url, [data.train[j] for j in picked], data.labels, traffic, seed=seed + 7919 * i,
                   groups=groups, **kwargs)

    def run(self, timeout_s: float | None = None) -> None:
        """Start and wait until one pass is done and its feedback sent (repeat=False), or the timeout."""
        self.start()
        deadline = None if timeout_s is None else time.monotonic() + timeout_s
        for t in self._threads:
            t.join(timeout=None if deadline is None else max(0.0, deadline - time.monotonic()))
        self.stop()

    def set_poison(self, flag: bool) -> None:
        self.poison = flag

    def _work(self) -> None:
        if self.await_route:
            self._await_route()
        self._users()

    def _await_route(self, timeout_s: float = 300.0) -> None:
        """Until the predict path is routed (not 404), or with a `ready_path` until that answers 200."""
        deadline = time.monotonic() + timeout_s
        while not self._stop.is_set() and time.monotonic() < deadline:
            try:
                status = self.client.get(self.ready_url or self.predict_url).status_code
                if (status == 200) if self.ready_url else (status != 404):
                    return
            except httpx.HTTPError:
                pass
            self._stop.wait(0.25)

    def _users(self) -> None:
        while not self._stop.is_set():
            try:
                if not self._tick():
                    return
            except Exception as exc:  # never let one bad answer end the traffic
                with self._lock:
                    self.last_error = f"{type(exc).__name__}: {' '.join(str(exc).split())[:200]}"
                    _bump(self.errors["predict"], "exception")
                self._stop.wait(0.05)

    def _tick(self) -> bool:
        """One unit of work: a due feedback, else a predict request; False when nothing is left."""
        due = self._pop_due()
        if due is not None:
            self._send_feedback(*due)
            return True
        with self._lock:
            exhausted, next_due = self._exhausted, self._pending[0][0] if self._pending else None
        if exhausted:
            if next_due is None:
                return False  # one pass done and every feedback sent
            self._stop.wait(max(0.0, min(next_due - time.monotonic(), 0.05)))
            return True
        wait = self._reserve_slot()
        if wait > 0:
            self._stop.wait(wait)
            if self._stop.is_set():
                return False
        rows = self._take_rows(self.cfg.batch_size)
        if rows:
            self._predict(rows)
        return True

    def _take_rows(self, k: int) -> list[tuple[Any, int, bool]]:
        """(input, label as meant now, first sight of the input) for the next `k` rows of the stream."""
        with self._lock:
            taken = list(itertools.islice(self._stream, k))
            if len(taken) < k:
                self._exhausted = True
            rows = []
            for j in taken:
                self.rows_taken += 1
                self.group = self.groups[j] if self.groups is not None else None
                text, label = self._meant(self.rows[j], self.group)
                key = hash(text)  # a text, or a pair's tuple of texts
                rows.append((text, label, key not in self._seen))
                self._seen.add(key)
            return rows

    def _meant(self, row: tuple[str, int], group: str | None) -> tuple[str, int]:
        """The row as the user means it now (call under _lock): after a concept drift, the next label."""
        drift = self.cfg.concept_drift
        if drift is None or self.rows_taken <= drift.after_rows or (drift.groups is not None and group not in drift.groups):
            return row
        return row[0], (row[1] + 1) % len(self.labels)

    def _predict(self, rows: list[tuple[Any, int, bool]]) -> None:
        body = predict_body([t for t, _, _ in rows], batched=self.cfg.batch_size != 1)  # texts or pairs
        started = time.monotonic()
        with self._lock:
            client = f"{self.client_prefix}-u{self._rng.randrange(self.cfg.clients)}"
        reply = self._post("predict", self.predict_url, body, {"x-evolve-client": client})
        with self._lock:
            self.predict_requests += 1
            if reply is None:
                self.predict_failed += len(rows)
                return
            self.latencies.append(time.monotonic() - started)
        answers = _predictions(reply, len(rows))
        if answers is None:
            with self._lock:
                _bump(self.errors["predict"], "bad_response")
                self.predict_failed += len(rows)
            return
        for (_, truth, first), answer in zip(rows, answers):
            self._observe(truth, answer, client, first)

    def _observe(self, truth: int, answer: dict[str, Any], client: str, first: bool = True) -> None:
        served = self._label_id(answer)
        with self._lock:
            self.predicts += 1
            version = answer.get("model_version", answer.get("version"))
            self.model_version = version if version is not None else self.model_version
            if served is None or "event_id" not in answer:
                _bump(self.errors["predict"], "unreadable_prediction")
                return
            right = served == truth
            self._score(str(version), first, right)
            believed = self._believed(truth)
            if self._rng.random() < self.cfg.p_label:
                label: Any = self.labels[believed] if self.label_format == "name" else believed
                payload = {"event_id": answer["event_id"], "label": label}
            else:
                payload = {"event_id": answer["event_id"], "reward": 1.0 if served == believed else 0.0}
            lo, hi = self.cfg.feedback_delay_s
            due = time.monotonic() + self._rng.uniform(lo, hi)
            heapq.heappush(self._pending, (due, next(self._seq), payload, client))

    def _score(self, version: str, first: bool, right: bool) -> None:
        """Count one answer (call under _lock): prequential only at the input's first sight."""
        self.recent.append((first, right))
        counts = self.by_version.setdefault(version, [0, 0, 0])
        counts[0] += 1
        if first:
            self.scored += 1
            self.correct += right
            counts[1] += 1
            counts[2] += right
        else:
            self.repeat_scored += 1
            self.repeat_correct += right

    def _believed(self, truth: int) -> int:
        """The label this user gives (call under _lock: it draws from the shared rng)."""
        n = len(self.labels)
        if self.poison:
            return (truth + 1) % n  # always wrong, and consistently so
        if self.cfg.label_noise > 0 and self._rng.random() < self.cfg.label_noise:
            return (truth + self._rng.randrange(1, n)) % n  # any other label
        return truth

    def _label_id(self, answer: dict[str, Any]) -> int | None:
        for key in ("label_id", "prediction", "label"):
            value = answer.get(key)
            if isinstance(value, bool):
                continue
            if isinstance(value, int) and 0 <= value < len(self.labels):
                return value
            if isinstance(value, str) and value in self._index:
                return self._index[value]
        return None

    def _pop_due(self) -> tuple[dict[str, Any], str] | None:
        with self._lock:
            if self._pending and self._pending[0][0] <= time.monotonic():
                return heapq.heappop(self._pending)[2:]
        return None

    def _send_feedback(self, payload: dict[str, Any], client: str) -> None:
        ok = self._post("feedback", self.feedback_url, payload, {"x-evolve-client": client}) is not None
        with self._lock:
            if not ok:
                self.feedback_failed += 1
                return
            self.feedbacks += 1
            if "label" in payload:
                self.feedback_labels += 1
            else:
                self.feedback_rewards += 1

    def _post(self, kind: str, url: str, body: dict[str, Any], headers: dict[str, str] | None = None) -> Any | None:
        return self.http.post(kind, url, body, headers)

    def _count(self, kind: str, what: str) -> None:
        self.http.count(kind, what)

    @property
    def retries(self) -> int:
        return self.http.retries

    def stats(self) -> dict[str, Any]:
        with self._lock:
            lat = np.array(self.latencies) if self.latencies else None
            return {
                "actor_id": self.actor_id,
                "incarnation": self.incarnation,
                "running": self.running(),
                "poison": self.poison,
                "predict_requests": self.predict_requests,
                "predicts": self.predicts,
                "predict_failed": self.predict_failed,
                "feedbacks": self.feedbacks,
                "feedback_labels": self.feedback_labels,
                "feedback_rewards": self.feedback_rewards,
                "feedback_failed": self.feedback_failed,
                "feedback_pending": len(self._pending),
                "retries": self.retries,
                "errors": {k: dict(v) for k, v in self.errors.items()},
                # prequential, first sight only: served vs true label on inputs this worker had not sent before
                "accuracy": self.correct / self.scored if self.scored else None,
                "first_sight": self.scored,
                "recent_accuracy": _first_sight_accuracy(self.recent),  # None once the recent answers are all repeats
                "repeats": self.repeat_scored,
                "repeat_accuracy": self.repeat_correct / self.repeat_scored if self.repeat_scored else None,
                "by_version": {v: {"served": n, "first_sight": k, "accuracy": c / k if k else None}
                               for v, (n, k, c) in self.by_version.items()},
                "model_version": self.model_version,
                "latency_p50_ms": float(np.percentile(lat, 50) * 1e3) if lat is not None else None,
                "latency_p95_ms": float(np.percentile(lat, 95) * 1e3) if lat is not None else None,
                "last_error": self.last_error,
                "rows_taken": self.rows_taken,
                "group": self.group,
            }


def _first_sight_accuracy(recent: Sequence[tuple[bool, bool]]) -> float | None:
    rights = [right for first, right in recent if first]
    return float(np.mean(rights)) if rights else None


def _predictions(reply: Any, n: int) -> list[dict[str, Any]] | None:
    """The per-text answers of a predict reply: one object, a list, or a list under a common key."""
    if isinstance(reply, dict):
        for key in ("predictions", "results", "items", "outputs"):
            if isinstance(reply.get(key), list):
                reply = reply[key]
                break
        else:
            reply = [reply] if n == 1 else reply
    if not isinstance(reply, list) or len(reply) != n or not all(isinstance(a, dict) for a in reply):
        return None
    return reply


