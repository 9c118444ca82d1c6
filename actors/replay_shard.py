"""The replay shard as a Ray actor: a thin shell around `core.replay.store.ShardStore`.

Restarts on failure (`max_restarts=-1`) and recovers its rows from its
segment files; Ray retries calls that were in flight (`max_task_retries=-1`),
which is safe because `add` is idempotent by row id.  Threaded, with adds and
samples in concurrency groups of their own: adds waiting on the rate limiter
(samplers behind) hold only add threads, so the samples that would release
them are always answered, and the other calls (info, export, cutoff) too.
An add waits on the limiter at most `replay.add_timeout_s`, then fails with
ReplayTimeout and writes nothing; the writer retries or counts it.
"""

from __future__ import annotations

import os
import time
from typing import Any

import numpy as np
import pyarrow as pa
import ray
from ray.util import metrics

from core.config.replay import ReplaySection
from core.replay.store import ShardStore
from core.replay.wire import from_ipc

ACTOR_PREFIX = "evolve-replay-shard-"
# threads per group: writers beyond ADD_THREADS queue for a thread, never for a sampler's
ADD_THREADS, SAMPLE_THREADS = 8, 8


class ShardMetrics:
    """Counters and gauges the Ray dashboard shows, tagged by table and shard."""

    def __init__(self, shard: int):
        tags = ("table", "shard")
        self.shard = str(shard)
        self.inserts = metrics.Counter("evolve_replay_inserts", "rows inserted (rows)", tag_keys=tags)
        self.duplicates = metrics.Counter("evolve_replay_duplicates", "rows refused as duplicates (rows)", tag_keys=tags)
        self.samples = metrics.Counter("evolve_replay_samples", "rows sampled (rows)", tag_keys=tags)
        self.size = metrics.Gauge("evolve_replay_size", "live rows (rows)", tag_keys=tags)
        self.disk = metrics.Gauge("evolve_replay_disk_bytes", "segment bytes on disk (bytes)", tag_keys=tags)
        self._last_gauges = 0.0

    def tags(self, table: str) -> dict[str, str]:
        return {"table": table, "shard": self.shard}

    def gauges(self, store: ShardStore) -> None:
        now = time.monotonic()
        if now - self._last_gauges < 1.0:  # stat() of segment files is not free: once a second
            return
        self._last_gauges = now
        for name, info in store.info().items():
            self.size.set(info["size"], tags=self.tags(name))
            self.disk.set(info["disk_bytes"], tags=self.tags(name))


@ray.remote(max_restarts=-1, max_task_retries=-1, max_concurrency=4,
            concurrency_groups={"add": ADD_THREADS, "sample": SAMPLE_THREADS})
class ReplayShard:
    def __init__(self, cfg: dict[str, Any], directory: str | None, shard: int, seed: int | None = None):
        self.store = ShardStore(ReplaySection.model_validate(cfg), directory, shard, seed)
        self.metrics = ShardMetrics(shard)

    @ray.method(concurrency_group="add")
    def add(self, table: str, batch: pa.RecordBatch | pa.Buffer, timeout_s: float | None = None,
            paced: bool = True) -> dict[str, int]:
        """Rows as a RecordBatch or as the IPC buffer the ReplayClient sends (core.replay.wire)."""
        ack = self.store.add(table, from_ipc(batch), timeout_s, paced)
        tags = self.metrics.tags(table)
        if ack["accepted"]:
            self.metrics.inserts.inc(ack["accepted"], tags=tags)
        if ack["duplicates"]:
            self.metrics.duplicates.inc(ack["duplicates"], tags=tags)
        self.metrics.gauges(self.store)
        return ack

    @ray.method(concurrency_group="sample")
    def sample(self, table: str, n: int, timeout_s: float | None = None) -> tuple[pa.RecordBatch, int, float]:
        """Rows plus this shard's (size, priority mass) after the draw, for the client's next split."""
        rows = self.store.sample(table, n, timeout_s)
        if rows.num_rows:
            self.metrics.samples.inc(rows.num_rows, tags=self.metrics.tags(table))
        size, mass = self.store.sizes(table)
        return rows, size, mass

    def sizes(self, table: str) -> tuple[int, float]:
        return self.store.sizes(table)

    @ray.method(concurrency_group="sample")
    def update_priorities(self, table: str, keys: np.ndarray, priorities: np.ndarray) -> int:
        return self.store.update_priorities(table, keys, priorities)

    def cutoff(self, table: str) -> int:
        return self.store.cutoff(table)

    def info(self) -> dict[str, dict[str, Any]]:
        return self.store.info()

    def export(self, table: str) -> pa.Table:
        return self.store.export(table)

    def pid(self) -> int:
        return os.getpid()


def launch_shards(cfg: ReplaySection, directory: str | None, seed: int | None = None) -> list[Any]:
    """Start (or re-attach to) the named shard actors of a run."""
    return [
        ReplayShard.options(
            # spread: one lost node takes as few shards as it can; a restarted shard recovers from
            # the shared replay directory wherever it lands
            name=f"{ACTOR_PREFIX}{i}", get_if_exists=True, num_cpus=cfg.shard_num_cpus, scheduling_strategy="SPREAD",
        ).remote(cfg.model_dump(mode="json"), directory, i, seed)
        for i in range(cfg.num_shards)
    ]
