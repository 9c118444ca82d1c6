"""Segments are only ever created: a second writer on one table fails its add saying so and the
first writer's acknowledged rows stay; segment files and table directories are private."""

from __future__ import annotations

import sys
import uuid
from pathlib import Path

import fsspec
import pyarrow as pa
import pytest

from core.config.replay import TableSection
from core.replay.object_log import ObjectSegmentLog
from core.replay.table import ReplayTable

sys.path.insert(0, str(Path(__file__).resolve().parents[2] / "benchmarks"))
from _transitions import cartpole_batch  # noqa: E402

NAME = "transitions"


def open_table(directory, fsync: bool = False) -> ReplayTable:
    return ReplayTable(NAME, TableSection(kind="transitions", obs_dim=4, capacity=1000), directory, segment_rows=16,
                       fsync=fsync, seed=0)


def batch(n: int, start: int, actor: str) -> pa.RecordBatch:
    return cartpole_batch(n, start, table=NAME, actor=actor, version=1)


def test_a_second_writer_on_a_table_directory_cannot_truncate_the_firsts_segment(tmp_path):
    first, second = open_table(tmp_path), open_table(tmp_path)  # two runs on one replay directory
    first.add(batch(8, 0, "first"))
    segment = tmp_path / "seg-000000000000.arrow"
    before = segment.read_bytes()
    with pytest.raises(FileExistsError, match=r"seg-000000000000\.arrow already exists: another process"):
        second.add(batch(8, 0, "second"))
    assert segment.read_bytes() == before
    first.close()
    second.close()
    recovered = open_table(tmp_path).export().column("id").to_pylist()
    assert recovered == [f"first-{i}" for i in range(8)]


def test_segment_files_and_table_directories_are_private(tmp_path):
    table = open_table(tmp_path / "replay" / NAME, fsync=True)
    for i in range(3):  # 48 rows: three segments, then the head written as rows are evicted
        table.add(batch(16, i * 16, "a"))
    table.log.write_head(16)
    assert (tmp_path / "replay" / NAME).stat().st_mode & 0o777 == 0o700
    files = list((tmp_path / "replay" / NAME).iterdir())
    assert len([f for f in files if f.name.startswith("seg-")]) == 3
    for f in files:
        assert f.stat().st_mode & 0o777 == 0o600, f"{f.name} is {oct(f.stat().st_mode & 0o777)}"
    table.close()


def test_an_object_already_at_a_segments_key_is_not_written_over():
    url = f"memory://evolve-{uuid.uuid4().hex[:8]}/t"
    schema = batch(1, 0, "x").schema
    first, second = ObjectSegmentLog(url, schema), ObjectSegmentLog(url, schema)
    first.append(0, batch(8, 0, "first"))
    fs, key = fsspec.filesystem("memory"), f"{url.removeprefix('memory://')}/seg-000000000000.arrow"
    before = fs.cat_file(key)
    with pytest.raises(FileExistsError, match="already exists: another process"):
        second.append(0, batch(8, 0, "second"))
    assert fs.cat_file(key) == before


def test_an_unanswered_upload_is_retried_over_its_own_object(monkeypatch):
    """An upload that failed without an answer may have landed: the retry of that add at the same
    seq replaces it (it was never acknowledged) instead of failing as another writer's."""
    url = f"memory://evolve-{uuid.uuid4().hex[:8]}/t"
    log = ObjectSegmentLog(url, batch(1, 0, "x").schema)
    real = log.store.create

    def lands_then_times_out(path, data):
        real(path, data)
        raise TimeoutError("no answer from the store")

    monkeypatch.setattr(log.store, "create", lands_then_times_out)
    with pytest.raises(OSError, match="no answer"):
        log.append(0, batch(8, 0, "try"))
    monkeypatch.setattr(log.store, "create", real)
    log.append(0, batch(8, 0, "retry"))
    again = ObjectSegmentLog(url, batch(1, 0, "x").schema)
    rows = [r for _, b in again.recover() for r in b.column("id").to_pylist()]
    assert rows == [f"retry-{i}" for i in range(8)]
