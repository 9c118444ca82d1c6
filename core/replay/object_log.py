"""A replay table's segments on an object store (s3://, gs://, any fsspec URL).

    <table url>/seg-000000000000.arrow   one acknowledged add: rows with seq 0 ..
    <table url>/seg-000000000256.arrow   the next add
    <table url>/state.json               {"head": seq}: rows before it are gone

Objects cannot be appended to, so each add is written as one sealed segment
object, and `add` is acknowledged only once the store has answered the PUT.
That is the whole durability promise: an acknowledged row is in the object
store, so a shard restarted on any node (the first one lost) recovers it by
listing and reading the table's objects.  Nothing is kept on local disk.

The price: one PUT per add (an add waits one round trip to the store) and one
object per add, so a table holds about capacity / rows-per-add objects and a
restarted shard reads them all.  Writers that batch (rollout actors send
`steps_per_write` rows at a time) keep both small.  Evicted objects are deleted
as on disk; a torn or foreign object is moved to quarantine/, never deleted.

A segment object is only created, never written over (S3 `If-None-Match: *`
through core.storage.conditional_put): an object already at a new segment's key is
another writer's, and the add fails saying so.  The one exception is a key this
log tried to write and got no answer for: that object, if it landed, is its
own unacknowledged add, which the retry at the same seq replaces.
"""

from __future__ import annotations

import errno
import json
import logging
from pathlib import Path
from typing import Iterator

import pyarrow as pa

from core.storage.conditional_put import ConditionalStore, Precondition
from core.replay.segments import QUARANTINE, Segment, SegmentLog, read_batches
from core.storage.paths import is_url, join, open_fs

_PREFIX, _SUFFIX = "seg-", ".arrow"
log = logging.getLogger(__name__)


class ObjectSegmentLog:
    """SegmentLog's interface (core.replay.segments) over fsspec objects; paths are object keys."""

    def __init__(self, url: str, schema: pa.Schema, segment_rows: int = 0, fsync: bool = False):
        self.url = url.rstrip("/")
        self.fs, self.root = open_fs(self.url)
        self.schema = schema
        self.segments: list[Segment] = []
        self.sizes: dict[str, int] = {}  # object key -> bytes
        self.store = ConditionalStore(self.fs)
        self._unanswered: set[str] = set()  # keys whose upload failed: each may hold our own unacknowledged add

    def _key(self, name: str) -> str:
        return f"{self.root}/{name}"

    # ---- recovery ----------------------------------------------------------
    def recover(self) -> Iterator[tuple[int, pa.RecordBatch]]:
        head = self.read_head()
        names = sorted(k.rsplit("/", 1)[-1] for k in self._list())
        keyed = [(self._key(n), int(n[len(_PREFIX):-len(_SUFFIX)])) for n in names
                 if n.startswith(_PREFIX) and n.endswith(_SUFFIX) and n[len(_PREFIX):-len(_SUFFIX)].isdigit()]
        blobs = self.fs.cat([k for k, _ in keyed], on_error="return") if keyed else {}
        for key, start in keyed:
            data = blobs.get(key)
            try:
                if isinstance(data, BaseException):
                    raise data
                batches = list(read_batches(pa.py_buffer(data), self.schema, key))
            except (pa.ArrowException, OSError) as e:
                self._quarantine(key, e)
                continue
            seg = Segment(key, start, sum(b.num_rows for b in batches))  # type: ignore[arg-type]
            if seg.rows == 0 or seg.end <= head:
                self.fs.rm_file(key)
                continue
            self.segments.append(seg)
            self.sizes[key] = len(data)
            seq = start
            for batch in batches:
                yield seq, batch
                seq += batch.num_rows

    def _list(self) -> list[str]:
        try:
            return [k for k in self.fs.ls(self.root, detail=False) if k.rsplit("/", 1)[-1] != QUARANTINE]
        except FileNotFoundError:
            return []

    def read_head(self) -> int:
        try:
            return int(json.loads(self.fs.cat_file(self._key("state.json")))["head"])
        except (FileNotFoundError, ValueError, KeyError):
            return 0

    # ---- writing -----------------------------------------------------------
    def append(self, seq: int, batch: pa.RecordBatch) -> None:
        """Upload one batch as its own segment object; returns once the store has it."""
        sink = pa.BufferOutputStream()
        with pa.ipc.new_stream(sink, self.schema) as writer:
            writer.write_batch(batch)
        data = sink.getvalue().to_pybytes()
        key = self._key(f"{_PREFIX}{seq:012d}{_SUFFIX}")
        try:
            if key in self._unanswered:
                self.fs.pipe_file(key, data)
            else:
                self.store.create(key, data)
        except Precondition:
            raise FileExistsError(errno.EEXIST, f"replay segment {key} already exists: another process is writing "
                                  "this table (two runs on one replay store?); nothing was overwritten") from None
        except Exception as e:  # botocore / aiohttp errors too: the add fails, as on a failed disk write
            self._unanswered.add(key)
            if isinstance(e, OSError):
                raise
            raise OSError(f"replay segment upload to {key} failed: {e}") from e
        self._unanswered.discard(key)
        self.segments.append(Segment(key, seq, batch.num_rows))  # type: ignore[arg-type]
        self.sizes[key] = len(data)

    def drop_before(self, head: int) -> int:
        """Delete objects wholly before `head` (each is sealed, so the newest may go too)."""
        freed, gone = 0, []
        while self.segments and self.segments[0].end <= head:
            seg = self.segments.pop(0)
            gone.append(seg.path)
            freed += self.sizes.pop(seg.path, 0)
        if gone:
            self.write_head(head)  # before the delete: a crash between leaves objects recovery deletes
            self.fs.rm([str(k) for k in gone])
        return freed

    def write_head(self, head: int) -> None:
        self.fs.pipe_file(self._key("state.json"), json.dumps({"head": head}).encode())

    def disk_bytes(self) -> int:
        return sum(self.sizes.values())

    def close(self) -> None:
        pass  # every segment is sealed as it is written

    def _quarantine(self, key: str, why: Exception) -> None:
        dest = join(self.root, QUARANTINE, key.rsplit("/", 1)[-1])
        try:
            self.fs.mv(key, dest)
        except Exception as e:  # the store refuses: leave the object where it is, say so
            log.warning("replay segment %s is unreadable (%s) and could not be moved (%s)", key, why, e)
            return
        log.warning("replay segment %s is unreadable (%s); moved to %s", key, why, dest)


def open_log(directory: str | Path, schema: pa.Schema, segment_rows: int,
             fsync: bool) -> SegmentLog | ObjectSegmentLog:
    """The segment log for a table directory: appended files on a local path, objects at a URL."""
    if is_url(directory):
        return ObjectSegmentLog(str(directory), schema)
    return SegmentLog(Path(directory), schema, segment_rows, fsync)
