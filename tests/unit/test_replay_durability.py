"""Replay tables on disk: recovery, torn tails, bounded disk, fifo head; bad input writes nothing."""

from __future__ import annotations

import json
import math
import sys
from pathlib import Path

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc
import pytest

from core.config.replay import ReplaySection, TableSection
from core.replay.segments import SegmentLog, scan
from core.replay.store import ShardStore
from core.replay.table import KEY, ReplayError, ReplayTable, ReplayTimeout
from core.data.schemas import SchemaError

sys.path.insert(0, str(Path(__file__).resolve().parents[2] / "benchmarks"))
from _transitions import cartpole_batch  # noqa: E402

NAME = "transitions"


def open_table(directory: Path, segment_rows: int = 16, **kw) -> ReplayTable:
    return ReplayTable(NAME, TableSection(kind="transitions", obs_dim=4, **kw), directory, segment_rows=segment_rows, seed=0)


def batch(n: int, start: int = 0, version: int = 1, actor: str = "a", table: str = NAME) -> pa.RecordBatch:
    return cartpole_batch(n, start, table=table, actor=actor, version=version)


def ids(rows) -> list[str]:
    return rows.column("id").to_pylist()


def segment_files(directory: Path) -> dict[str, int]:
    return {p.name: p.stat().st_size for p in sorted(directory.glob("seg-*.arrow"))}


def with_column(b: pa.RecordBatch, name: str, values) -> pa.RecordBatch:
    i = b.schema.get_field_index(name)
    arrays = list(b.columns)
    arrays[i] = values
    return pa.RecordBatch.from_arrays(arrays, names=b.schema.names)


# ---- 8. durability -------------------------------------------------------------------


def test_rows_are_recovered_exactly_once_and_in_order(tmp_path):
    t = open_table(tmp_path, capacity=1000)
    for k in range(5):
        t.add(batch(10, 10 * k))
        t.add(batch(10, 10 * k))  # duplicates are not written twice
    before = t.export()
    t.close()
    assert len(segment_files(tmp_path)) >= 3  # rolled over segments of 16 rows

    again = open_table(tmp_path, capacity=1000)
    after = again.export()
    assert ids(after) == [f"a-{i}" for i in range(50)]
    assert after.equals(before)
    assert again.size == 50 and len(again.index) == 50
    info = again.info()
    assert info["disk_bytes"] == sum(segment_files(tmp_path).values())
    assert (info["oldest_policy_version"], info["newest_policy_version"]) == (1, 1)


def test_recovered_table_dedups_and_continues_seq(tmp_path):
    t = open_table(tmp_path, capacity=1000)
    t.add(batch(20, 0))
    t.close()
    t = open_table(tmp_path, capacity=1000)
    assert t.add(batch(20, 0)) == {"accepted": 0, "duplicates": 20}
    assert t.add(batch(5, 20)) == {"accepted": 5, "duplicates": 0}
    rows = t.sample(500)
    key_of = dict(zip(ids(rows), rows.column(KEY).to_pylist()))
    assert key_of == {f"a-{i}": i for i in range(25)}  # new rows continue the recovered seq
    t.close()
    t = open_table(tmp_path, capacity=1000)
    assert ids(t.export()) == [f"a-{i}" for i in range(25)]


@pytest.mark.parametrize("damage", ["truncate", "garbage"])
def test_a_torn_last_batch_is_ignored_and_the_rest_recovered(tmp_path, damage):
    t = open_table(tmp_path, segment_rows=1000, capacity=1000)
    seg = None
    for k in range(4):
        t.add(batch(10, 10 * k))
        seg = seg or next(iter(tmp_path.glob("seg-*.arrow")))
        if k == 2:
            intact = seg.stat().st_size
    t.close()
    whole = seg.stat().st_size
    data = seg.read_bytes()
    if damage == "truncate":
        seg.write_bytes(data[: (intact + whole) // 2])  # the last batch cut in the middle
    else:
        seg.write_bytes(data[:intact] + data[intact : intact + 24] + b"\x13\x37" * 100)

    t = open_table(tmp_path, segment_rows=1000, capacity=1000)
    assert ids(t.export()) == [f"a-{i}" for i in range(30)]
    # the torn batch was never acknowledged: it can be sent again, and writing goes on
    assert t.add(batch(10, 30)) == {"accepted": 10, "duplicates": 0}
    t.add(batch(5, 40))
    t.close()
    t = open_table(tmp_path, segment_rows=1000, capacity=1000)
    assert ids(t.export()) == [f"a-{i}" for i in range(45)]


def test_a_directory_of_another_schema_is_refused(tmp_path):
    t = open_table(tmp_path, capacity=10)
    t.add(batch(3))
    t.close()
    with pytest.raises(ValueError, match="schema on disk does not match"):
        ReplayTable(NAME, TableSection(kind="transitions", obs_dim=5), tmp_path)
    assert sum(segment_files(tmp_path).values()) > 0  # and nothing was deleted


def test_segments_written_before_a_nullable_column_existed_recover_with_nulls(tmp_path):
    # Segments that lack the nullable `discount` column still load, with nulls there.
    new = batch(6)
    old_schema = pa.schema(list(new.schema)[:-1], metadata=new.schema.metadata)
    old = pa.RecordBatch.from_arrays(new.columns[:-1], schema=old_schema)
    log = SegmentLog(tmp_path, old_schema, segment_rows=16)
    log.append(0, old)
    log.close()
    t = open_table(tmp_path, capacity=100)
    assert t.size == 6 and ids(t.export()) == [f"a-{i}" for i in range(6)]
    assert t.export().column("discount").null_count == 6
    t.add(batch(4, 6))  # new rows go to a new segment in the new schema
    t.close()
    again = open_table(tmp_path, capacity=100)
    rows = again.export()
    assert ids(rows) == [f"a-{i}" for i in range(10)] and rows.column("discount").null_count == 6


def test_evicted_segments_are_deleted_so_disk_stays_bounded(tmp_path):
    capacity, segment_rows = 50, 20
    t = open_table(tmp_path, segment_rows=segment_rows, capacity=capacity)
    t.add(batch(10, 0))
    t.add(batch(10, 10))
    one_segment = sum(segment_files(tmp_path).values())  # a full segment of 20 rows
    per_row = one_segment / segment_rows
    for k in range(2, 100):
        t.add(batch(10, 10 * k))
        files = segment_files(tmp_path)
        on_disk = sum(seg.rows for seg, _ in scan(tmp_path))
        assert on_disk <= capacity + segment_rows
        assert len(files) <= math.ceil(capacity / segment_rows) + 1
        assert sum(files.values()) <= (capacity + segment_rows) * per_row * 1.2
    assert t.info()["disk_bytes"] == sum(segment_files(tmp_path).values())
    assert ids(t.export()) == [f"a-{i}" for i in range(950, 1000)]
    t.close()
    t = open_table(tmp_path, segment_rows=segment_rows, capacity=capacity)
    assert ids(t.export()) == [f"a-{i}" for i in range(950, 1000)]
    assert t.size == len(t.index) == capacity


def test_fifo_head_is_persisted_so_consumed_rows_are_not_redelivered(tmp_path):
    t = open_table(tmp_path, segment_rows=10, capacity=100, sampler="fifo")
    for k in range(3):
        t.add(batch(10, 10 * k))
    assert ids(t.sample(25)) == [f"a-{i}" for i in range(25)]
    t.close()
    assert json.loads((tmp_path / "state.json").read_text())["head"] == 25
    assert sorted(segment_files(tmp_path)) == ["seg-000000000020.arrow"]

    t = open_table(tmp_path, segment_rows=10, capacity=100, sampler="fifo")
    assert ids(t.export()) == [f"a-{i}" for i in range(25, 30)]
    assert t.add(batch(5, 30)) == {"accepted": 5, "duplicates": 0}
    assert ids(t.sample(10)) == [f"a-{i}" for i in range(25, 35)]


def test_fifo_rows_added_after_a_fully_drained_restart_survive_the_next_restart(tmp_path):
    t = open_table(tmp_path, segment_rows=100, capacity=100, sampler="fifo")
    t.add(batch(10, 0))
    t.sample(10)  # drained: state.json says head 10
    t.close()
    t = open_table(tmp_path, segment_rows=100, capacity=100, sampler="fifo")
    assert t.size == 0
    assert t.add(batch(5, 100)) == {"accepted": 5, "duplicates": 0}  # acknowledged
    t.close()
    t = open_table(tmp_path, segment_rows=100, capacity=100, sampler="fifo")
    assert ids(t.export()) == [f"a-{i}" for i in range(100, 105)], "acknowledged rows were lost"


def test_shard_store_recovers_every_table(tmp_path):
    cfg = ReplaySection(
        num_shards=1, segment_rows=8, fsync=True,
        tables={NAME: TableSection(kind="transitions", obs_dim=4, capacity=100), "fifo": TableSection(sampler="fifo", obs_dim=4)},
    )
    store = ShardStore(cfg, tmp_path, shard=0, seed=1)
    store.add(NAME, batch(20))
    store.add("fifo", batch(12, table="fifo"))
    store.sample("fifo", 4)
    store.close()
    assert (tmp_path / "shard-000" / NAME).is_dir()
    store = ShardStore(cfg, tmp_path, shard=0, seed=1)
    assert ids(store.export(NAME)) == [f"a-{i}" for i in range(20)]
    assert len(store.export("fifo")) in (8, 12)  # at-least-once: the head may lag a little
    assert store.sizes(NAME) == (20, 20.0)
    assert store.add(NAME, batch(20)) == {"accepted": 0, "duplicates": 20}


# ---- 6. bad input: a clear error, and nothing written ----------------------------------------


LOADED = {"capacity": 8, "max_batch_rows": 5, "sampler": "prioritized"}


@pytest.fixture
def loaded(tmp_path):
    t = open_table(tmp_path, **LOADED)
    t.add(batch(4, 0))
    yield t, tmp_path
    t.close()


def _bad_batches():
    b = batch(3, 100)
    nan_reward = with_column(b, "reward", pa.array([1.0, float("nan"), 1.0], pa.float32()))
    obs = b.column("obs").flatten().to_numpy().copy()
    obs[5] = np.inf
    inf_obs = with_column(b, "obs", pa.FixedSizeListArray.from_arrays(pa.array(obs), 4))
    wrong_type = with_column(b, "action", pa.array(["left", "right", "left"]))
    return [
        ("missing", b.drop_columns(["reward"]), SchemaError, "reward"),
        ("wrong type", wrong_type, SchemaError, "action"),
        ("nan reward", nan_reward, SchemaError, "reward"),
        ("inf obs", inf_obs, SchemaError, "obs"),
        ("other table", batch(3, 100, table="text"), SchemaError, "table"),
        ("over max_batch_rows", batch(6, 100), ReplayError, None),
    ]


@pytest.mark.parametrize("case", _bad_batches(), ids=lambda c: c[0])
def test_bad_batches_name_table_and_column_and_write_nothing(loaded, case):
    t, directory = loaded
    _, bad, error, column = case
    files = segment_files(directory)
    with pytest.raises(error) as info:
        t.add(bad)
    msg = str(info.value)
    assert f"'{NAME}'" in msg
    if column is not None:
        assert info.value.column == column and info.value.table == NAME
        assert f"column '{column}'" in msg
    assert t.size == 4 and len(t.index) == 4
    assert segment_files(directory) == files
    assert t.info()["inserts"] == 4
    t.close()
    assert ids(open_table(directory, **LOADED).export()) == [f"a-{i}" for i in range(4)]


def test_batch_over_capacity_is_refused(tmp_path):
    t = open_table(tmp_path, capacity=8)
    t.add(batch(2))
    with pytest.raises(ReplayError, match=r"'transitions'.*9 rows.*limit of 8"):
        t.add(batch(9, 100))
    assert t.size == 2 and ids(t.export()) == ["a-0", "a-1"]
    assert sum(seg.rows for seg, _ in scan(tmp_path)) == 2


def test_bad_priorities_are_refused_and_change_nothing(loaded):
    t, _ = loaded
    t.update_priorities(np.arange(4), np.array([1.0, 2.0, 3.0, 4.0]))
    total = t.tree.total
    for keys, prio, why in [
        (np.arange(2), np.array([1.0, float("nan")]), "finite"),
        (np.arange(2), np.array([1.0, np.inf]), "finite"),
        (np.arange(2), np.array([1.0, -0.5]), ">= 0"),
        (np.arange(3), np.array([1.0, 2.0]), "3 keys but 2 priorities"),
    ]:
        with pytest.raises(ReplayError, match=f"'{NAME}'.*{why}"):
            t.update_priorities(keys, prio)
    assert t.tree.total == total


def test_uniform_table_refuses_priorities(tmp_path):
    t = open_table(tmp_path, capacity=8)
    with pytest.raises(ReplayError, match="not prioritized"):
        t.update_priorities(np.arange(1), np.ones(1))


def test_store_errors_name_the_table(tmp_path):
    cfg = ReplaySection(num_shards=1, tables={NAME: TableSection(obs_dim=4, samples_per_insert=1.0, min_size=2, error_buffer=4.0)})
    store = ShardStore(cfg, tmp_path)
    with pytest.raises(ReplayError, match=r"unknown table 'nope'.*\['transitions'\]"):
        store.add("nope", batch(1))
    with pytest.raises(ReplayError, match="unknown table"):
        store.sample("nope", 1)
    store.add(NAME, batch(4))
    with pytest.raises(ReplayError, match=r"'transitions'.*window \(8\)"):
        store.sample(NAME, 9)
    with pytest.raises(ReplayTimeout):
        store.sample(NAME, 8, timeout_s=0)  # inside the window, but actors are behind
    assert store.info()[NAME]["samples"] == 0
    assert not list(tmp_path.glob("shard-000/nope"))
    assert pc.sum(store.export(NAME).column("policy_version")).as_py() == 4
