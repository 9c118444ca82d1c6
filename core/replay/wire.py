"""How record batches travel to a shard: one Arrow IPC stream buffer.

Ray ships a `pa.Buffer` as one out-of-band buffer; a pickled RecordBatch
costs a cloudpickle walk over every column and buffer, a large share of the
CPU a whole `add` costs the rollout actor.

A batch over `COMPRESS_ABOVE` bytes is written with lz4 buffer compression:
Ray sends an argument under 100 KB inside the task request and puts a bigger one
in the object store, which adds a put and a fetch to the call.  lz4 roughly
halves a transitions batch, which keeps a typical shard's share of an add under
that limit for less than the put and fetch would cost; smaller batches go
uncompressed.  Readers need no flag: the IPC stream says how its buffers are
compressed.
"""

from __future__ import annotations

import pyarrow as pa


COMPRESS_ABOVE = 64 * 1024
_LZ4 = pa.ipc.IpcWriteOptions(compression="lz4") if pa.Codec.is_available("lz4") else None


def to_ipc(batch: pa.RecordBatch) -> pa.Buffer:
    sink = pa.BufferOutputStream()
    options = _LZ4 if _LZ4 is not None and batch.nbytes > COMPRESS_ABOVE else None
    with pa.ipc.new_stream(sink, batch.schema, options=options) as writer:
        writer.write_batch(batch)
    return sink.getvalue()


def from_ipc(data: pa.RecordBatch | pa.Buffer | bytes) -> pa.RecordBatch:
    """`to_ipc`'s inverse (its one batch, zero-copy); a RecordBatch passes through."""
    if isinstance(data, pa.RecordBatch):
        return data
    return pa.ipc.open_stream(data).read_next_batch()
