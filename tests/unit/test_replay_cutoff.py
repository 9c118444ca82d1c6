"""A replay table's cutoff: after it, every sampler serves only rows added later, also after a restart."""

from __future__ import annotations

import sys
from pathlib import Path

import pyarrow as pa
import pytest

from core.config.replay import ReplaySection, TableSection
from core.replay.store import ShardStore
from core.replay.table import ReplayTable, ReplayTimeout

sys.path.insert(0, str(Path(__file__).resolve().parents[2] / "benchmarks"))
from _transitions import cartpole_batch  # noqa: E402

NAME = "transitions"


def make(directory: Path | None = None, **kw) -> ReplayTable:
    return ReplayTable(NAME, TableSection(kind="transitions", obs_dim=4, **kw), directory, segment_rows=16, seed=0)


def batch(n: int, start: int = 0) -> pa.RecordBatch:
    return cartpole_batch(n, start, table=NAME, actor="a", version=1)


def ids(rows) -> set[str]:
    return set(rows.column("id").to_pylist())


@pytest.mark.parametrize("sampler", ["uniform", "prioritized", "fifo"])
def test_after_a_cutoff_only_rows_added_later_are_sampled(sampler):
    t = make(capacity=1000, sampler=sampler, min_size=10)
    t.add(batch(100, 0))
    assert t.cutoff() == 100 and t.size == 0
    t.add(batch(20, 1000))
    new = {f"a-{i}" for i in range(1000, 1020)}
    drawn = ids(t.sample(20)) if sampler == "fifo" else set().union(*(ids(t.sample(50)) for _ in range(5)))
    assert drawn <= new and len(drawn) > 10


def test_samples_wait_for_min_size_new_rows_while_adds_go_on():
    t = make(capacity=1000, min_size=10, samples_per_insert=4.0, error_buffer=100.0)
    t.add(batch(50, 0))
    t.sample(40)
    t.cutoff()
    t.add(batch(5, 100))  # below min_size: the limiter lets inserts through
    with pytest.raises(ReplayTimeout, match="min_size 10"):
        t.sample(8, timeout_s=0.05)
    t.add(batch(5, 200))
    assert ids(t.sample(8, timeout_s=1.0)) <= {f"a-{i}" for i in (*range(100, 105), *range(200, 205))}


def test_removed_rows_stay_removed_after_a_restart(tmp_path):
    t = make(tmp_path, capacity=1000)
    t.add(batch(40, 0))
    t.cutoff()
    t.add(batch(10, 100))
    t.close()
    again = make(tmp_path, capacity=1000)
    assert ids(again.export()) == {f"a-{i}" for i in range(100, 110)}
    assert again.add(batch(10, 100)) == {"accepted": 0, "duplicates": 10}  # still idempotent
    assert again.add(batch(5, 0)) == {"accepted": 5, "duplicates": 0}  # a removed id is new again


def test_a_cutoff_of_an_empty_table_removes_nothing_and_the_store_names_the_table(tmp_path):
    cfg = ReplaySection(num_shards=1, tables={NAME: TableSection(kind="transitions", obs_dim=4)})
    store = ShardStore(cfg, tmp_path)
    assert store.cutoff(NAME) == 0
    store.add(NAME, batch(7))
    assert store.cutoff(NAME) == 7 and store.sizes(NAME) == (0, 0.0)
    with pytest.raises(ValueError, match="unknown table"):
        store.cutoff("nope")
