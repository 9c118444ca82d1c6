"""Append-only Arrow IPC segment files: the durable half of a replay table.

    <table dir>/seg-000000000000.arrow   rows with seq 0 ..
    <table dir>/seg-000000065536.arrow   rows with seq 65536 ..
    <table dir>/state.json               {"head": seq}: rows before it are gone

Every batch is written and flushed to the OS before `add` is acknowledged,
so a killed process loses nothing it acknowledged (fsync=True also survives
a power cut).  A batch torn by a kill was never acknowledged; recovery reads
up to the tear and writes on in a new segment.  A segment whose rows were all
evicted is deleted, so disk use stays bounded by capacity plus one segment.

A failed write (a full or failing disk) fails its `add`, cuts the segment back
to its last whole batch and closes it, so no acknowledged row ever follows a
tear.  A file that is not a readable segment is moved to `quarantine/`, never
deleted: it may be the only copy of rows someone wants back.

A segment file is only ever created, never opened over an existing one: its
name is the seq of its first row, and recovery reads rows by that name, so a
file already there is another writer's (two runs on one replay directory), and
the add fails saying so rather than truncate rows that writer acknowledged.
Table directories are 0o700 and segment files 0o600: rows are users' data.
"""

from __future__ import annotations

import errno
import json
import logging
import os
from dataclasses import dataclass
from pathlib import Path
from typing import Iterator

import pyarrow as pa

_PREFIX, _SUFFIX = "seg-", ".arrow"
QUARANTINE = "quarantine"
log = logging.getLogger(__name__)


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
        self.dir.mkdir(mode=0o700, parents=True, exist_ok=True)
        self.schema, self.segment_rows, self.fsync = schema, segment_rows, fsync
        self.segments: list[Segment] = []
        self._sink: pa.OSFile | None = None
        self._writer: pa.ipc.RecordBatchStreamWriter | None = None

    # ---- recovery ----------------------------------------------------------
    def recover(self) -> Iterator[tuple[int, pa.RecordBatch]]:
        """Yield (seq of first row, batch) for every intact batch on disk, oldest first;
        delete segments that are empty or wholly before the recorded head."""
        head = read_head(self.dir)
        for seg, batches in scan(self.dir, self.schema, quarantine=True):
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
        before = self._sink.tell()
        try:
            self._writer.write_batch(batch)
            self._sink.flush()
            if self.fsync:
                os.fsync(self._sink.fileno())
        except OSError:
            self._cut(before)
            raise
        self.segments[-1].rows += batch.num_rows

    def _cut(self, size: int) -> None:
        """After a failed write: drop the torn bytes and close the segment, so the next
        append opens a new one and nothing acknowledged is written after a tear."""
        seg, writer, sink = self.segments[-1], self._writer, self._sink
        self._writer = self._sink = None
        for close in (writer.close, sink.close):
            try:
                close()
            except (OSError, pa.ArrowException):
                pass  # the disk is failing; the truncate below decides what stays
        try:
            os.truncate(seg.path, size)
        except OSError as e:
            log.warning("replay segment %s: could not cut a torn write (%s); recovery stops at the tear", seg.path, e)
        if seg.rows == 0:
            self.segments.pop()
            seg.path.unlink(missing_ok=True)  # no rows: the next roll may reuse its name

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
        fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)  # a temporary name of ours alone
        with open(fd, "w") as fh:
            fh.write(json.dumps({"head": head}))
        os.replace(tmp, self.dir / "state.json")
        self._sync_dir()

    def _sync_dir(self) -> None:
        """A created or renamed file survives a power cut only once its directory entry is synced."""
        if self.fsync:
            sync_dir(self.dir)

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
        create_private(path)
        sink = pa.OSFile(str(path), "ab")  # the file just created: appending writes from its start
        try:
            self._writer = pa.ipc.new_stream(sink, self.schema)
        except (OSError, pa.ArrowException):
            sink.close()
            path.unlink(missing_ok=True)  # a torn header: no batch may ever follow it
            raise
        self._sink = sink
        self.segments.append(Segment(path, seq))
        self._sync_dir()


def create_private(path: Path) -> None:
    """Create an empty 0o600 file at `path`; FileExistsError, said plainly, when one is there."""
    try:
        fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL | os.O_NOFOLLOW, 0o600)
    except FileExistsError:
        raise FileExistsError(errno.EEXIST, f"replay segment {path} already exists: another process is writing "
                              "this table (two runs on one replay directory?); nothing was overwritten") from None
    os.close(fd)


def read_head(directory: Path) -> int:
    try:
        return int(json.loads((Path(directory) / "state.json").read_text())["head"])
    except (FileNotFoundError, ValueError, KeyError):
        return 0


def sync_dir(directory: Path) -> None:
    fd = os.open(directory, os.O_RDONLY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


def scan(directory: Path, schema: pa.Schema | None = None,
         quarantine: bool = False) -> Iterator[tuple[Segment, list[pa.RecordBatch]]]:
    """Every segment of a table directory with its intact batches, oldest first.  An unreadable
    file is skipped, and with quarantine=True moved to quarantine/ (else this is read-only)."""
    for path in sorted(Path(directory).glob(f"{_PREFIX}*{_SUFFIX}")):
        try:
            start = int(path.name[len(_PREFIX) : -len(_SUFFIX)])
        except ValueError:
            continue  # not named by us
        try:
            batches = list(_read_intact(path, schema))
        except (pa.ArrowException, OSError) as e:  # a schema mismatch (plain ValueError) still raises
            if quarantine:
                _quarantine(path, e)
            continue
        yield Segment(path, start, sum(b.num_rows for b in batches)), batches


def _quarantine(path: Path, why: Exception) -> None:
    qdir = path.parent / QUARANTINE
    qdir.mkdir(mode=0o700, exist_ok=True)
    dest, n = qdir / path.name, 0
    while dest.exists():  # an earlier quarantined file of the same name is kept too
        n += 1
        dest = qdir / f"{path.name}.{n}"
    os.replace(path, dest)
    sync_dir(path.parent)
    log.warning("replay segment %s is unreadable (%s); moved to %s", path, why, dest)


def _read_intact(path: Path, schema: pa.Schema | None) -> Iterator[pa.RecordBatch]:
    """Batches of one segment up to the first torn or unreadable one."""
    with pa.OSFile(str(path), "rb") as fh:
        data = fh.read_buffer()  # in memory, so the file can be deleted once its rows are evicted
    yield from read_batches(data, schema, str(path))


def read_batches(data: pa.Buffer, schema: pa.Schema | None, where: str) -> Iterator[pa.RecordBatch]:
    """The intact batches of one segment's bytes (a file's or an object's), up to a torn tail."""
    if data.size == 0:
        return  # killed before the schema was written
    reader = pa.ipc.open_stream(data)  # a header that is there but unreadable: the caller quarantines
    added: list[pa.Field] = []
    if schema is not None and not reader.schema.equals(schema):
        added = _added_nullable_fields(reader.schema, schema)
        if added is None:
            raise ValueError(f"{where}: schema on disk does not match the table's declared schema")
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
