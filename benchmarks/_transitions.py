"""CartPole-sized transitions for the replay benchmarks and tests (shared helper)."""

from __future__ import annotations

import datetime as dt

import numpy as np
import pyarrow as pa

from core.data.schemas import transitions_schema


def cartpole_batch(n: int, start: int, table: str = "transitions", actor: str = "bench", version: int = 1,
                   rng: np.random.Generator | None = None) -> pa.RecordBatch:
    """n transitions with ids `{actor}-{start+i}`: 4-float observations, as a rollout writes them."""
    rng = rng or np.random.default_rng(start)
    obs = rng.normal(size=(n, 4)).astype(np.float32)
    nxt = obs + rng.normal(scale=0.05, size=(n, 4)).astype(np.float32)
    now = pa.array(np.full(n, np.datetime64(dt.datetime.now(dt.timezone.utc).replace(tzinfo=None), "us")),
                   pa.timestamp("us", tz="UTC"))
    return pa.RecordBatch.from_arrays(
        [
            pa.array([f"{actor}-{i}" for i in range(start, start + n)]),
            pa.array([table] * n), pa.array(["rollout"] * n), pa.array([actor] * n), pa.array(["cartpole"] * n),
            pa.array(np.full(n, version, np.int64)), now,
            pa.FixedSizeListArray.from_arrays(pa.array(obs.ravel()), 4),
            pa.array(rng.integers(0, 2, n)), pa.array(np.ones(n, np.float32)),
            pa.FixedSizeListArray.from_arrays(pa.array(nxt.ravel()), 4),
            pa.array(rng.random(n) < 0.05), pa.array(np.zeros(n, bool)),
            pa.array(np.full(n, -0.69, np.float32)), pa.array(np.full(n, 0.99**3, np.float32)),
        ],
        schema=transitions_schema(4),
    )
