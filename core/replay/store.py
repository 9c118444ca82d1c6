"""A replay shard: the declared tables, each durable under its own directory.

`ShardStore` is the whole store logic of one shard, in plain Python; the Ray
actor in `actors/replay_shard.py` is a thin shell around it, and a client
routes rows to shards by a stable hash of their id.
"""

from __future__ import annotations

import zlib
from pathlib import Path
from typing import Any, Iterable

import numpy as np
import pyarrow as pa

from core.config.replay import ReplaySection, per_shard
from core.replay.table import ReplayError, ReplayTable
from core.storage.paths import join


class ShardStore:
    def __init__(self, cfg: ReplaySection, directory: str | Path | None, shard: int = 0, seed: int | None = None):
        self.cfg, self.shard = cfg, shard
        # a local path or an fsspec URL (core.storage.paths); each table's log picks files or objects
        self.dir = join(directory, f"shard-{shard:03d}") if directory is not None else None
        self.tables = {
            name: ReplayTable(
                name, per_shard(tcfg, cfg.num_shards), join(self.dir, name) if self.dir is not None else None,
                segment_rows=cfg.segment_rows, fsync=tcfg.resolved_fsync(cfg.fsync),
                seed=None if seed is None else seed + 7919 * shard + i,
            )
            for i, (name, tcfg) in enumerate(cfg.tables.items())
        }

    def table(self, name: str) -> ReplayTable:
        try:
            return self.tables[name]
        except KeyError:
            raise ReplayError(f"unknown table {name!r}; declared tables: {sorted(self.tables)}") from None

    def add(self, table: str, batch: Any, timeout_s: float | None = None, paced: bool = True) -> dict[str, int]:
        """`timeout_s`: the rate limiter's longest hold (None: replay.add_timeout_s), then ReplayTimeout;
        `paced` False: not held (ReplayTable.add)."""
        return self.table(table).add(batch, self.cfg.add_timeout_s if timeout_s is None else timeout_s, paced)

    def sample(self, table: str, n: int, timeout_s: float | None = None) -> pa.RecordBatch:
        return self.table(table).sample(n, timeout_s)

    def update_priorities(self, table: str, keys: np.ndarray, priorities: np.ndarray) -> int:
        return self.table(table).update_priorities(keys, priorities)

    def cutoff(self, table: str) -> int:
        """The table stops serving rows inserted before now (ReplayTable.cutoff); rows removed."""
        return self.table(table).cutoff()

    def info(self) -> dict[str, dict[str, Any]]:
        return {name: t.info() for name, t in self.tables.items()}

    def sizes(self, table: str) -> tuple[int, float]:
        """(rows, total priority mass) — what a client needs to split a sample."""
        t = self.table(table)
        with t.cond:
            return t.size, (t.tree.total if t.tree is not None else float(t.size))

    def export(self, table: str) -> pa.Table:
        return self.table(table).export()

    def close(self) -> None:
        for t in self.tables.values():
            t.close()


def shard_of(ids: Iterable[str], num_shards: int) -> np.ndarray:
    """Stable across processes and runs (unlike hash()): the same id always lands on the same shard."""
    return np.fromiter((zlib.crc32(i.encode()) for i in ids), dtype=np.uint32) % num_shards
