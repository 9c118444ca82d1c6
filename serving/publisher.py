"""The publisher: makes a learner's new version live for rollout actors and Serve replicas.

The learner's rank 0 calls `publish`; the publisher stores the version in the
registry (safetensors + lineage), puts the weights in the Ray object store
once, promotes the version, and wakes every subscriber long-polling
`next_version`.  Subscribers (rollout actors, the evaluator, Serve replicas)
fetch the weights by reference and `ack`; the publish latency of a version is
the time from the learner's call until the last subscriber acknowledged it.
Weights never travel as JSON, and Serve's `reconfigure` (far slower than a
long-poll) is not used.

The registry's `live` pointer is the truth a restarted publisher starts from:
the first call about a policy it does not hold (a long-poll, a publish, stats)
loads the registry's live version and serves it, so a subscriber asking after
a restart gets the live version, never nothing, and the next version's
lineage still names its parent.
"""

from __future__ import annotations

import asyncio
import logging
import time
from collections import defaultdict
from typing import Any

import numpy as np
import ray
from ray.util import metrics

from core.storage.registry import PolicyRegistry, RegistryError

PUBLISHER_NAME = "evolve-publisher"
log = logging.getLogger(__name__)


class _Live:
    def __init__(self, version: int, ref: Any, published_at: float, spec: dict | None):
        self.version, self.ref, self.published_at, self.spec = version, ref, published_at, spec


@ray.remote(num_cpus=0, max_restarts=-1, max_task_retries=-1)
class PolicyPublisher:
    def __init__(self, registry_uri: str, put: Any = None):
        """`put`: how weights go to the object store (ray.put; tests pass a stand-in)."""
        self.registry = PolicyRegistry(registry_uri)
        self.put = put or ray.put
        self.live: dict[str, _Live] = {}
        self.looked_up: set[str] = set()  # policies whose registry live version was read (or published here)
        self.reloaded: dict[str, int] = {}  # policy -> the version read back from the registry at (re)start
        self.loading = asyncio.Lock()
        self.changed = asyncio.Condition()
        self.writing = asyncio.Lock()  # one registry write at a time: versions and the live pointer stay in order
        self.subscribers: dict[str, set[str]] = defaultdict(set)
        self.acks: dict[tuple[str, int], dict[str, float]] = defaultdict(dict)
        self.latencies: dict[str, list[float]] = defaultdict(list)
        self.published: dict[str, int] = defaultdict(int)
        self.measured: dict[str, int] = {}  # newest version whose latency is recorded, per policy
        self.measured_log: list[dict[str, Any]] = []  # every measured publish, in order: the run report's histogram
        tags = ("policy",)
        self._m_version = metrics.Gauge("evolve_policy_live_version", "live policy version (version number)", tag_keys=tags)
        self._m_latency = metrics.Histogram(
            "evolve_publish_latency_s", "learner publish -> every subscriber running it (seconds)",
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
        await self._ensure(policy_id)
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
        self.looked_up.add(policy_id)
        self.live[policy_id] = _Live(version, self.put(weights), published_at, spec)
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
        await self._ensure(policy_id)

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

    async def _ensure(self, policy_id: str) -> None:
        """Once per policy: hold the registry's live version if nothing was published here yet."""
        if policy_id in self.looked_up:
            return
        async with self.loading:
            if policy_id in self.looked_up:
                return
            found = await asyncio.to_thread(self._read_live, policy_id)
            self.looked_up.add(policy_id)
            if found is not None and policy_id not in self.live:  # a publish that won the race stands
                version, weights, spec = found
                self.live[policy_id] = _Live(version, self.put(weights), time.time(), spec)
                self.reloaded[policy_id] = version
                self.measured[policy_id] = version  # subscribers re-acking it after a restart are no latency
                self._m_version.set(version, tags={"policy": policy_id})
                async with self.changed:
                    self.changed.notify_all()

    def _read_live(self, policy_id: str) -> tuple[int, dict[str, Any], dict | None] | None:
        """(version, weights, spec) of the registry's live version; None if there is none."""
        try:
            meta = self.registry.latest(policy_id, "live")
            if meta is None:
                return None
            loaded = self.registry.load(policy_id, meta.version, as_numpy=True)
        except RegistryError as exc:  # unreadable: serve nothing rather than something unverified
            log.error("publisher: cannot reload the live version of %r: %s", policy_id, exc)
            return None
        spec = meta.info.get("spec")
        if spec is None:  # stored by the gate without one: the newest version that has it
            specs = (self.registry.get(policy_id, v).info.get("spec") for v in reversed(self.registry.versions(policy_id)))
            spec = next((s for s in specs if s is not None), None)
        log.info("publisher: serving %r v%d, live in the registry", policy_id, meta.version)
        return meta.version, loaded.weights, spec

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
        self.measured_log.append({"policy_id": policy_id, "version": version, "latency_s": latency,
                                  "published_at": live.published_at})
        self._m_latency.observe(latency, tags={"policy": policy_id})
        for key in [k for k in self.acks if k[0] == policy_id and k[1] <= version]:
            del self.acks[key]

    def measured_since(self, index: int) -> tuple[int, list[dict[str, Any]]]:
        """Publishes measured after the first `index` (the caller's cursor): (new cursor, records).
        A restarted publisher starts over at 0; a cursor past the end reads from there."""
        start = index if index <= len(self.measured_log) else 0
        return len(self.measured_log), self.measured_log[start:]

    def forget(self, subscriber: str) -> None:
        for subs in self.subscribers.values():
            subs.discard(subscriber)

    def stats(self, policy_id: str) -> dict[str, Any]:
        lat = self.latencies.get(policy_id, [])
        live = self.live.get(policy_id)
        return {
            "live_version": live.version if live else None,
            "versions_published": self.published.get(policy_id, 0),
            "reloaded_version": self.reloaded.get(policy_id),  # read from the registry at (re)start
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
