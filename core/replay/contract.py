"""What every user of the replay store sees: four calls, no Ray.

`actors.replay_client.ReplayClient` implements it across shard actors;
`core.replay.store.ShardStore` implements the same calls in one process.
Learners and serving type against this Protocol and get a client from the
run wiring, so they never import `actors`.
"""

from __future__ import annotations

from typing import Any, Protocol, runtime_checkable

import numpy as np
import pyarrow as pa


@runtime_checkable
class ReplayStore(Protocol):
    def add(self, table: str, batch: Any, timeout_s: float | None = None) -> Any:
        """Rows in (validated against the table's schema); durable once acknowledged."""

    def sample(self, table: str, n: int, timeout_s: float | None = None) -> pa.RecordBatch:
        """n rows plus `_key`, `_probability`, `_times_sampled` (and `_weight` from the client)."""

    def update_priorities(self, table: str, keys: np.ndarray, priorities: np.ndarray) -> int:
        """New priorities for sampled rows still live; returns how many were updated."""

    def info(self) -> dict[str, dict[str, Any]]:
        """Per table: size, rates, policy-version range, disk bytes."""
