"""A replay table on a real, small filesystem that fills up: the add that hits ENOSPC fails,
every acknowledged row survives a reopen, and adds work again once space is freed."""

from __future__ import annotations

import errno
import os
import subprocess
import sys
from pathlib import Path

import pyarrow as pa
import pytest

from core.config.replay import TableSection
from core.replay.table import ReplayTable

sys.path.insert(0, str(Path(__file__).resolve().parents[2] / "benchmarks"))
from _transitions import cartpole_batch  # noqa: E402

pytestmark = pytest.mark.chaos

NAME = "transitions"


@pytest.fixture
def small_fs(tmp_path):
    mnt = tmp_path / "mnt"
    mnt.mkdir()
    done = subprocess.run(["mount", "-t", "tmpfs", "-o", "size=2m", "tmpfs", str(mnt)], capture_output=True, text=True)
    if done.returncode != 0:
        pytest.skip(f"cannot mount a small tmpfs (needs root): {done.stderr.strip()}")
    try:
        yield mnt
    finally:
        subprocess.run(["umount", str(mnt)], check=False)


def open_table(directory: Path) -> ReplayTable:
    cfg = TableSection(kind="transitions", obs_dim=4, capacity=1_000_000, max_batch_rows=1000)
    return ReplayTable(NAME, cfg, directory, segment_rows=2000, fsync=True, seed=0)


def batch(n: int, start: int) -> pa.RecordBatch:
    return cartpole_batch(n, start, table=NAME, actor="a", version=1)


def fill_until_full(t: ReplayTable) -> tuple[list[str], list[str]]:
    """Add batches until the disk is full: (ids acknowledged, ids of the add that failed)."""
    acked: list[str] = []
    for k in range(100_000):
        b = batch(200, 200 * k)
        try:
            t.add(b)
        except OSError as e:
            assert e.errno == errno.ENOSPC, e
            return acked, b.column("id").to_pylist()
        acked += b.column("id").to_pylist()
    raise AssertionError("the filesystem never filled up")


def test_disk_full_fails_the_add_and_keeps_every_acknowledged_row(small_fs):
    filler = small_fs / "filler"
    filler.write_bytes(os.urandom(512 * 1024))  # freed later to make room again
    table_dir = small_fs / "table"
    t = open_table(table_dir)
    acked, failed = fill_until_full(t)
    assert acked, "nothing fit before the disk filled"
    assert t.export().column("id").to_pylist() == acked
    t.close()

    again = open_table(table_dir)  # recovery reads every segment to its end: no tear follows a row
    assert again.export().column("id").to_pylist() == acked
    assert set(failed).isdisjoint(again.index)
    assert not (table_dir / "quarantine").exists()  # nothing was left half-written

    filler.unlink()
    more = batch(200, 10_000_000)
    again.add(more)
    again.close()
    final = open_table(table_dir).export().column("id").to_pylist()
    assert final == acked + more.column("id").to_pylist()
