"""Append-only Arrow IPC segment files: the durable half of a replay table.

    <table dir>/seg-000000000000.arrow   rows with seq 0 ..
    <table dir>/seg-000000065536.arrow   rows with seq 65536 ..
    <table dir>/state.json               {"head": seq}: rows before it are gone

Every batch is written and flushed to the OS before `add` is acknowledged,
so a killed process loses nothing it acknowledged (fsync=True also survives
a power cut).  A batch torn by a kill was never acknowledged; recovery reads
up to the tear and writes on in a new segment.  A segment whose rows were all
evicted is deleted, so disk use stays bounded by capacity plus one segment.
"""

from __future__ import annotations

import json
import os
from dataclasses import dataclass
from pathlib import Path
from typing import Iterator

import pyarrow as pa

_PREFIX, _SUFFIX = "seg-", ".arrow"


@dataclass
class Segment:
    path: Path
    start: int  # seq of its first row
    rows: int = 0

    @property
    def end(self) -> int:
        return self.start + self.rows


class SegmentLog:
    def __init__(self, directory: Path, schema: pa.Schema, segment_rows: int, fsync: bool = False):
        self.dir = Path(directory)
        self.dir.mkdir(parents=True, exist_ok=True)
        self.schema, self.segment_rows, self.fsync = schema, segment_rows, fsync
        self.segments: list[Segment] = []
        self._sink: pa.OSFile | None = None
        self._writer: pa.ipc.RecordBatchStreamWriter | None = None

    # ---- recovery ----------------------------------------------------------
    def recover(self) -> Iterator[tuple[int, pa.RecordBatch]]:
        """Yield (seq of first row, batch) for every intact batch on disk, oldest first;
        delete segments that are empty or wholly before the recorded head."""
        head = read_head(self.dir)
        for seg, batches in scan(self.dir, self.schema):
            if seg.rows == 0 or seg.end <= head:
                seg.path.unlink()  # empty (killed before its first batch) or wholly evicted
                continue
            self.segments.append(seg)
            seq = seg.start
            for batch in batches:
                yield seq, batch
                seq += batch.num_rows

    def read_head(self) -> int:
        return read_head(self.dir)

    # ---- writing -----------------------------------------------------------
    def append(self, seq: int, batch: pa.RecordBatch) -> None:
        """Write and flush one batch whose first row has `seq`; returns once it is durable."""
        if self._writer is None or self.segments[-1].rows >= self.segment_rows:
            self._roll(seq)
        self._writer.write_batch(batch)
        self._sink.flush()
        if self.fsync:
            os.fsync(self._sink.fileno())
        self.segments[-1].rows += batch.num_rows

    def drop_before(self, head: int) -> int:
        """Delete segments wholly before `head`; returns bytes freed."""
        freed = 0
        while self.segments and self.segments[0].end <= head and len(self.segments) > 1:
            seg = self.segments.pop(0)
            freed += seg.path.stat().st_size
            seg.path.unlink()
        if freed:
            self.write_head(head)
        return freed

    def write_head(self, head: int) -> None:
        tmp = self.dir / "state.json.tmp"
        tmp.write_text(json.dumps({"head": head}))
        os.replace(tmp, self.dir / "state.json")

    def disk_bytes(self) -> int:
        return sum(seg.path.stat().st_size for seg in self.segments if seg.path.exists())

    def close(self) -> None:
        if self._writer is not None:
            self._writer.close()
            self._sink.close()
            self._writer = self._sink = None

    def _roll(self, seq: int) -> None:
        self.close()
        path = self.dir / f"{_PREFIX}{seq:012d}{_SUFFIX}"
        self._sink = pa.OSFile(str(path), "wb")
        self._writer = pa.ipc.new_stream(self._sink, self.schema)
        self.segments.append(Segment(path, seq))


def read_head(directory: Path) -> int:
    try:
        return int(json.loads((Path(directory) / "state.json").read_text())["head"])
    except (FileNotFoundError, ValueError, KeyError):
        return 0


def scan(directory: Path, schema: pa.Schema | None = None) -> Iterator[tuple[Segment, list[pa.RecordBatch]]]:
    """Read-only: every segment of a table directory with its intact batches, oldest first."""
    for path in sorted(Path(directory).glob(f"{_PREFIX}*{_SUFFIX}")):
        batches = list(_read_intact(path, schema))
        seg = Segment(path, int(path.name[len(_PREFIX) : -len(_SUFFIX)]), sum(b.num_rows for b in batches))
        yield seg, batches


def _read_intact(path: Path, schema: pa.Schema | None) -> Iterator[pa.RecordBatch]:
    """Batches of one segment up to the first torn or unreadable one."""
    with pa.OSFile(str(path), "rb") as fh:
        data = fh.read_buffer()  # in memory, so the file can be deleted once its rows are evicted
    try:
        reader = pa.ipc.open_stream(data)
    except (pa.ArrowInvalid, OSError):
        return  # killed before the schema was fully written
    added: list[pa.Field] = []
    if schema is not None and not reader.schema.equals(schema):
        added = _added_nullable_fields(reader.schema, schema)
        if added is None:
            raise ValueError(f"{path}: schema on disk does not match the table's declared schema")
    while True:
        try:
            batch = reader.read_next_batch()
        except StopIteration:
            return
        except (pa.ArrowInvalid, OSError):
            return  # a torn tail: written by a killed process, never acknowledged
        if added:  # written before those columns existed: they read as nulls
            batch = pa.RecordBatch.from_arrays(
                batch.columns + [pa.nulls(batch.num_rows, f.type) for f in added], schema=schema)
        yield batch


def _added_nullable_fields(on_disk: pa.Schema, declared: pa.Schema) -> list[pa.Field] | None:
    """The declared fields after the on-disk ones, when the on-disk schema is the declared one
    minus nullable fields at its end (a column added in a later release); else None."""
    n = len(on_disk)
    if n >= len(declared) or any(not on_disk.field(i).equals(declared.field(i)) for i in range(n)):
        return None
    added = [declared.field(i) for i in range(n, len(declared))]
    return added if all(f.nullable for f in added) else None
