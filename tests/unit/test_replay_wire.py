"""core.replay.wire: what a replay add sends to a shard comes back the same."""

import numpy as np
import pyarrow as pa

from core.replay.wire import COMPRESS_ABOVE, from_ipc, to_ipc


def _batch(rows: int) -> pa.RecordBatch:
    rng = np.random.default_rng(0)
    return pa.RecordBatch.from_arrays(
        [pa.array([f"actor-0-{i}" for i in range(rows)]), pa.array(rng.random(rows).astype(np.float32)),
         pa.array(np.repeat(np.arange(rows // 8 + 1), 8)[:rows])],
        names=["id", "reward", "version"],
    )


def test_a_small_batch_round_trips_uncompressed():
    batch = _batch(10)
    buf = to_ipc(batch)
    assert from_ipc(buf).equals(batch)
    assert buf.size >= batch.nbytes  # raw buffers plus the stream's framing


def test_a_large_batch_round_trips_and_travels_smaller():
    batch = _batch(8_000)
    assert batch.nbytes > COMPRESS_ABOVE
    buf = to_ipc(batch)
    assert from_ipc(buf).equals(batch)
    if pa.Codec.is_available("lz4"):
        assert buf.size < batch.nbytes * 0.8


def test_a_record_batch_passes_through():
    batch = _batch(3)
    assert from_ipc(batch) is batch
