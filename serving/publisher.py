"""The publisher: makes a learner's new version live for rollout actors and Serve replicas.

The learner's rank 0 calls `publish`; the publisher stores the version in the
registry (safetensors + lineage), puts the weights in the Ray object store
once, promotes the version, and wakes every subscriber long-polling
`next_version`.  Subscribers (rollout actors, the evaluator, Serve replicas)
fetch the weights by reference and `ack`; the publish latency of a version is
the time from the learner's call until the last subscriber acknowledged it.
Weights never travel as JSON, and Serve's `reconfigure` (far slower than a
long-poll) is not used.
"""

from __future__ import annotations

import asyncio
import time
from collections import defaultdict
from typing import Any

import numpy as np
import ray
from ray.util import metrics

from core.registry import PolicyRegistry

PUBLISHER_NAME = "evolve-publisher"


class _Live:
    def __init__(self, version: int, ref: Any, published_at: float, spec: dict | None):
        self.version, self.ref, self.published_at, self.spec = version, ref, published_at, spec


@ray.remote(num_cpus=0, max_restarts=-1, max_task_retries=-1)
class PolicyPublisher:
    def __init__(self, registry_uri: str):
        self.registry = PolicyRegistry(registry_uri)
        self.live: dict[str, _Live] = {}
        self.changed = asyncio.Condition()
        self.writing = asyncio.Lock()  # one registry write at a time: versions and the live pointer stay in order
        self.subscribers: dict[str, set[str]] = defaultdict(set)
        self.acks: dict[tuple[str, int], dict[str, float]] = defaultdict(dict)
        self.latencies: dict[str, list[float]] = defaultdict(list)
        self.published: dict[str, int] = defaultdict(int)
        self.measured: dict[str, int] = {}  # newest version whose latency is recorded, per policy
        tags = ("policy",)
        self._m_version = metrics.Gauge("evolve_policy_live_version", "live policy version", tag_keys=tags)
        self._m_latency = metrics.Histogram(
            "evolve_publish_latency_s", "learner publish -> every subscriber running it",
            boundaries=[0.05, 0.1, 0.25, 0.5, 1, 2, 5, 10], tag_keys=tags,
        )

    async def publish(self, policy_id: str, weights: dict[str, Any], metadata: dict[str, Any] | None = None,
                      spec: dict | None = None, published_at: float | None = None,
                      files: dict[str, bytes] | None = None) -> int:
        """Store, promote and announce a version; returns its number.  `files` (tokenizer,
        config, ...) are stored with the version; subscribers read them from the registry."""
        published_at = published_at or time.time()
        meta = dict(metadata or {})
        if spec is not None:
            meta.setdefault("info", {})["spec"] = spec
        async with self.writing:
            current = self.live.get(policy_id)
            if current is not None and "parent_version" not in meta:
                meta["parent_version"] = current.version
            # file writes off the event loop, so long-polls keep being answered
            version = await asyncio.to_thread(self.registry.publish, policy_id, weights, meta, files=files)
            await asyncio.to_thread(self.registry.promote, policy_id, version)
            await self._go_live(policy_id, version, weights, published_at, spec)
        return version

    async def restore(self, policy_id: str, weights: dict[str, Any], version: int, spec: dict | None = None) -> None:
        """Make an already-stored version live again (a resumed run, a rollback)."""
        await self._go_live(policy_id, version, weights, time.time(), spec)

    async def _go_live(self, policy_id: str, version: int, weights: dict, published_at: float, spec: dict | None) -> None:
        self.live[policy_id] = _Live(version, ray.put(weights), published_at, spec)
        self.published[policy_id] += 1
        self._m_version.set(version, tags={"policy": policy_id})
        async with self.changed:
            self.changed.notify_all()

    async def next_version(self, policy_id: str, after: int, subscriber: str | None, timeout_s: float = 30.0):
        """Long-poll: returns (version, [weights ref], spec) once a version other than `after`
        is live (newer, or older after a rollback), or None after `timeout_s` (the caller simply polls again).  A named subscriber
        counts for publish latency; `subscriber=None` follows without counting (the evaluator)."""
        if subscriber is not None:
            self.subscribers[policy_id].add(subscriber)

        def newer() -> bool:
            # "differs", not "is greater": a rollback makes an older version live again, and
            # every subscriber still running the newer one must switch back to it
            live = self.live.get(policy_id)
            return live is not None and live.version != after

        async with self.changed:
            try:
                await asyncio.wait_for(self.changed.wait_for(newer), timeout_s)
            except asyncio.TimeoutError:
                return None
        live = self.live[policy_id]
        return live.version, [live.ref], live.spec  # the ref in a list: Ray must not resolve it here

    def ack(self, policy_id: str, version: int, subscriber: str) -> None:
        live = self.live.get(policy_id)
        if self.measured.get(policy_id, -1) >= version:
            return  # a re-ack (a restarted subscriber starts from 0): measured once already
        acks = self.acks[(policy_id, version)]
        acks[subscriber] = time.time()
        if live is None or live.version != version or not self.subscribers[policy_id] <= set(acks):
            return
        latency = max(acks.values()) - live.published_at
        self.measured[policy_id] = version
        self.latencies[policy_id].append(latency)
        self._m_latency.observe(latency, tags={"policy": policy_id})
        for key in [k for k in self.acks if k[0] == policy_id and k[1] <= version]:
            del self.acks[key]

    def forget(self, subscriber: str) -> None:
        for subs in self.subscribers.values():
            subs.discard(subscriber)

    def stats(self, policy_id: str) -> dict[str, Any]:
        lat = self.latencies.get(policy_id, [])
        live = self.live.get(policy_id)
        return {
            "live_version": live.version if live else None,
            "versions_published": self.published.get(policy_id, 0),
            "subscribers": sorted(self.subscribers.get(policy_id, ())),
            "publish_latency_p50_s": float(np.percentile(lat, 50)) if lat else None,
            "publish_latency_p95_s": float(np.percentile(lat, 95)) if lat else None,
            "latencies_measured": len(lat),
        }


class PolicySubscription:
    """A subscriber's side of the long-poll; picklable, handed to actors by the run wiring.

    `poll()` never blocks: it checks whether the pending long-poll has answered.
    """

    def __init__(self, publisher: Any, policy_id: str, subscriber: str | None, version: int = 0):
        self.publisher, self.policy_id, self.subscriber, self.version = publisher, policy_id, subscriber, version
        self._pending = None

    def __getstate__(self) -> dict[str, Any]:
        return {"publisher": self.publisher, "policy_id": self.policy_id, "subscriber": self.subscriber, "version": 0}

    def __setstate__(self, state: dict[str, Any]) -> None:
        self.__init__(**state)

    def poll(self) -> tuple[int, dict[str, Any]] | None:
        if self._pending is None:
            self._pending = self.publisher.next_version.remote(self.policy_id, self.version, self.subscriber)
        ready, _ = ray.wait([self._pending], timeout=0)
        if not ready:
            return None
        reply, self._pending = ray.get(self._pending), None
        if reply is None:
            return None
        version, (ref,), _spec = reply
        self.version = version
        return version, ray.get(ref)

    def wait(self, timeout_s: float) -> tuple[int, dict[str, Any]] | None:
        """Blocking variant for subscribers with nothing else to do (the evaluator)."""
        deadline = time.monotonic() + timeout_s
        while time.monotonic() < deadline:
            update = self.poll()
            if update is not None:
                return update
            if self._pending is not None:
                ray.wait([self._pending], timeout=max(0.0, min(1.0, deadline - time.monotonic())))
        return None

    def ack(self, version: int) -> None:
        if self.subscriber is not None:
            self.publisher.ack.remote(self.policy_id, version, self.subscriber)


def get_or_create_publisher(registry_uri: str) -> Any:
    return PolicyPublisher.options(name=PUBLISHER_NAME, get_if_exists=True).remote(registry_uri)
