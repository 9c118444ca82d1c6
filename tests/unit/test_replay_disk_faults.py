"""Replay tables on a failing disk: a failed add leaves no trace, recovery survives gaps and
unreadable files, and directories are synced when fsync is on."""

from __future__ import annotations

import errno
import os
import stat
import sys
from pathlib import Path

import pyarrow as pa
import pytest

from core.replay import segments
from core.config.replay import TableSection
from core.replay.table import ReplayTable

sys.path.insert(0, str(Path(__file__).resolve().parents[2] / "benchmarks"))
from _transitions import cartpole_batch  # noqa: E402

NAME = "transitions"


def open_table(directory: Path, fsync: bool = True, segment_rows: int = 16) -> ReplayTable:
    cfg = TableSection(kind="transitions", obs_dim=4, capacity=1000)
    return ReplayTable(NAME, cfg, directory, segment_rows=segment_rows, fsync=fsync, seed=0)


def batch(n: int, start: int) -> pa.RecordBatch:
    return cartpole_batch(n, start, table=NAME, actor="a", version=1)


def visible(t: ReplayTable) -> list[str]:
    return t.export().column("id").to_pylist()


def is_file(fd: int) -> bool:
    return stat.S_ISREG(os.fstat(fd).st_mode)


@pytest.fixture
def fail_next_file_fsync(monkeypatch):
    """Arm once: the next fsync of a segment file raises ENOSPC (the bytes are already written)."""
    real, armed = os.fsync, []

    def fsync(fd):
        if armed and is_file(fd):
            armed.clear()
            raise OSError(errno.ENOSPC, "No space left on device")
        return real(fd)

    monkeypatch.setattr(segments.os, "fsync", fsync)
    return lambda: armed.append(True)


def test_failed_add_raises_and_leaves_nothing_visible(tmp_path, fail_next_file_fsync):
    t = open_table(tmp_path)
    acked = visible_after(t, [(5, 0)])
    fail_next_file_fsync()
    with pytest.raises(OSError) as e:
        t.add(batch(5, 100))
    assert e.value.errno == errno.ENOSPC
    assert visible(t) == acked
    assert t.size == 5 and t.index.keys().isdisjoint(ids_of(batch(5, 100)))
    t.add(batch(5, 200))
    assert len(list(tmp_path.glob("seg-*.arrow"))) == 2  # the next add opened a new segment
    expected = visible(t)
    t.close()
    again = open_table(tmp_path)
    assert visible(again) == expected
    assert set(visible(again)).isdisjoint(ids_of(batch(5, 100)))


def test_failed_first_batch_of_a_segment_leaves_no_file(tmp_path, fail_next_file_fsync):
    t = open_table(tmp_path)
    fail_next_file_fsync()
    with pytest.raises(OSError):
        t.add(batch(3, 0))
    assert list(tmp_path.glob("seg-*.arrow")) == []
    t.add(batch(3, 10))
    t.close()
    assert visible(open_table(tmp_path)) == ids_of(batch(3, 10))


def test_torn_write_is_cut_back(tmp_path):
    t = open_table(tmp_path, fsync=False)
    t.add(batch(4, 0))
    seg = t.log.segments[-1].path
    size = seg.stat().st_size
    t.log._writer = TearingWriter(t.log._writer)
    with pytest.raises(OSError):
        t.add(batch(4, 50))
    assert seg.stat().st_size == size  # the half-written batch is gone
    t.add(batch(4, 60))
    t.close()
    assert visible(open_table(tmp_path, fsync=False)) == ids_of(batch(4, 0)) + ids_of(batch(4, 60))


class TearingWriter:
    """Writes a batch, then fails as a disk does part-way through."""

    def __init__(self, inner):
        self.inner = inner

    def write_batch(self, b):
        self.inner.write_batch(b)
        raise OSError(errno.EIO, "Input/output error")

    def close(self):
        self.inner.close()


def test_gap_between_segments_is_recovered(tmp_path):
    t = open_table(tmp_path, fsync=False, segment_rows=4)
    for k in range(4):
        t.add(batch(4, 10 * k))
    t.close()
    files = sorted(tmp_path.glob("seg-*.arrow"))
    assert len(files) == 4
    files[1].unlink()  # a segment lost in the middle
    again = open_table(tmp_path, fsync=False, segment_rows=4)
    got = visible(again)
    assert got == ids_of(batch(4, 20)) + ids_of(batch(4, 30))  # the run after the gap is served
    assert again.tail == 16  # the counter goes on past the highest recovered seq
    again.add(batch(2, 90))
    again.close()
    assert visible(open_table(tmp_path, fsync=False, segment_rows=4))[-2:] == ids_of(batch(2, 90))


def test_corrupt_segment_is_quarantined_and_the_rest_recovered(tmp_path, caplog):
    t = open_table(tmp_path, fsync=False, segment_rows=4)
    for k in range(3):
        t.add(batch(4, 10 * k))
    t.close()
    files = sorted(tmp_path.glob("seg-*.arrow"))
    files[0].write_bytes(b"this is not arrow at all" * 10)
    (tmp_path / "seg-000000000100.arrow").write_bytes(b"\xff" * 64)
    again = open_table(tmp_path, fsync=False, segment_rows=4)
    assert visible(again) == ids_of(batch(4, 10)) + ids_of(batch(4, 20))
    quarantined = sorted(p.name for p in (tmp_path / "quarantine").iterdir())
    assert quarantined == [files[0].name, "seg-000000000100.arrow"]
    assert "quarantine" in caplog.text


def test_directory_is_fsynced_on_create_and_rename(tmp_path, monkeypatch):
    real, dirs = os.fsync, []

    def fsync(fd):
        if stat.S_ISDIR(os.fstat(fd).st_mode):
            dirs.append(fd)
        return real(fd)

    monkeypatch.setattr(segments.os, "fsync", fsync)
    t = open_table(tmp_path, fsync=True)
    t.add(batch(2, 0))  # creates a segment
    assert len(dirs) == 1
    t.log.write_head(0)  # renames state.json into place
    assert len(dirs) == 2
    t.close()
    dirs.clear()
    t = open_table(tmp_path / "nosync", fsync=False)
    t.add(batch(2, 0))
    t.log.write_head(0)
    assert dirs == []


def visible_after(t: ReplayTable, adds) -> list[str]:
    for n, start in adds:
        t.add(batch(n, start))
    return visible(t)


def ids_of(b: pa.RecordBatch) -> list[str]:
    return b.column("id").to_pylist()
