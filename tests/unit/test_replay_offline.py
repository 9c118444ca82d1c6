"""Offline reading of a replay directory, shard routing, and the columnar rings."""

from __future__ import annotations

import datetime as dt
import sys
import zlib
from pathlib import Path

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq
import pytest
from scipy.stats import chisquare

from core.replay.columns import CodeRing, ColumnRings, FixedRing, ObjectRing
from core.config.replay import ReplaySection, TableSection
from core.replay.offline import inspect, read_table, to_hf_dataset, to_parquet
from core.replay.store import ShardStore, shard_of
from core.data.schemas import schema_for, to_record_batch

sys.path.insert(0, str(Path(__file__).resolve().parents[2] / "benchmarks"))
from _transitions import cartpole_batch  # noqa: E402

T0 = dt.datetime(2024, 5, 1, 12, 0, tzinfo=dt.timezone.utc)


def common(table: str, n: int, start: int, sources=("rollout",), version: int = 1) -> dict:
    return {
        "id": [f"{table}-{i}" for i in range(start, start + n)],
        "table": [table] * n,
        "source": [sources[i % len(sources)] for i in range(n)],
        "actor_id": [f"actor-{i % 3}" for i in range(n)],
        "policy_id": ["p"] * n,
        "policy_version": [version] * n,
        "created_at": [T0 + dt.timedelta(seconds=i) for i in range(start, start + n)],
    }


def text_rows(n: int, start: int = 0, table: str = "text", **kw) -> dict:
    return {**common(table, n, start, **kw), "text": [f"line {i} ü" for i in range(start, start + n)]}


def feedback_rows(n: int, start: int = 0, table: str = "feedback", **kw) -> dict:
    return {
        **common(table, n, start, sources=("feedback",), **kw),
        "event_id": [f"ev-{i}" for i in range(start, start + n)],
        "text": [f"msg {i}" for i in range(n)],
        "prediction": [i % 2 for i in range(n)],
        "probs": [[0.25, 0.75][: 1 + i % 2] for i in range(n)],
        "label": [None if i % 3 == 0 else i % 2 for i in range(n)],
        "reward": [None if i % 2 else float(i) / 2 for i in range(n)],
    }


def transition_rows(n: int, start: int = 0, obs_dim: int | None = 4, table: str = "transitions") -> dict:
    width = obs_dim or 3
    return {
        **common(table, n, start),
        "obs": [[float(i + j) for j in range(width if obs_dim else 1 + i % width)] for i in range(n)],
        "action": list(range(n)),
        "reward": [0.5 * i for i in range(n)],
        "next_obs": [[float(-i - j) for j in range(width if obs_dim else 1 + i % width)] for i in range(n)],
        "terminated": [i % 4 == 0 for i in range(n)],
        "truncated": [i % 5 == 0 for i in range(n)],
        "logp": [None if i % 2 else -0.1 * i for i in range(n)],
    }


# ---- 11. columnar rings ------------------------------------------------------------------------------


@pytest.mark.parametrize(
    "kind, kw, rows",
    [
        ("transitions", {"obs_dim": 4}, transition_rows),
        ("transitions", {}, lambda n, s: transition_rows(n, s, obs_dim=None)),
        ("text", {}, text_rows),
        ("feedback", {}, feedback_rows),
    ],
    ids=["transitions-fixed", "transitions-varlen", "text", "feedback"],
)
def test_column_rings_round_trip_every_column_with_nulls(kind, kw, rows):
    schema = schema_for(kind, **kw)
    rings = ColumnRings(schema, capacity=8)
    first = to_record_batch(kind, schema, rows(6, 0))
    second = to_record_batch(kind, schema, rows(5, 100))
    assert first.column("id").null_count == 0
    if kind == "feedback":
        assert first.column("label").null_count and first.column("reward").null_count
    if kind == "transitions":
        assert first.column("logp").null_count
    s1 = rings.put(0, first)
    assert rings.take(s1).equals(first)
    # wraps around the ring: slots 6, 7, 0, 1, 2 overwrite part of the first batch
    s2 = rings.put(6, second, second.column("id").to_pylist())
    assert s2.tolist() == [6, 7, 0, 1, 2]
    assert rings.take(s2).equals(second)
    assert rings.take(np.array([3, 4, 5])).equals(first.slice(3, 3))
    assert rings.ids(s2) == second.column("id").to_pylist()
    # a value written over a null is valid again, and a null over a value is null again
    for name in ("logp", "label", "reward"):
        if name in schema.names and schema.field(name).nullable:
            got = rings.take(s2).column(name).to_pylist()
            assert got == second.column(name).to_pylist()
    # repeated and unordered slots
    slots = np.array([2, 2, 7, 0])
    expected = pa.Table.from_batches([second]).take([4, 4, 1, 2]).to_batches()[0]
    assert rings.take(slots).equals(expected)


def test_ring_kinds_follow_the_arrow_type():
    rings = ColumnRings(schema_for("transitions", obs_dim=4), 4)
    kinds = {r.field.name: type(r) for r in rings.rings}
    assert kinds["obs"] is FixedRing and kinds["created_at"] is FixedRing and kinds["terminated"] is FixedRing
    assert kinds["source"] is CodeRing and kinds["actor_id"] is CodeRing
    assert kinds["id"] is ObjectRing
    assert type(ColumnRings(schema_for("feedback"), 4).rings[schema_for("feedback").get_field_index("probs")]) is ObjectRing


# ---- 10. shard routing -------------------------------------------------------------------------------


def test_shard_of_is_stable_and_known():
    ids = [f"actor-{i}-{j}" for i in range(5) for j in range(200)]
    a, b = shard_of(ids, 4), shard_of(list(ids), 4)
    assert np.array_equal(a, b)
    assert a.tolist() == [zlib.crc32(i.encode()) % 4 for i in ids]
    # a fixed, known value: crc32(b"actor-0-17") == 0x2C40D1EF == 742445551
    assert zlib.crc32(b"actor-0-17") == 742445551
    assert shard_of(["actor-0-17"], 7).tolist() == [742445551 % 7] == [1]
    assert shard_of(["actor-0-17"], 1).tolist() == [0]
    assert len(shard_of([], 3)) == 0


@pytest.mark.parametrize("num_shards", [2, 3, 8])
def test_shard_of_is_roughly_balanced(num_shards):
    ids = [f"rollout-{i}" for i in range(20_000)]
    counts = np.bincount(shard_of(ids, num_shards), minlength=num_shards)
    assert counts.sum() == 20_000
    assert chisquare(counts).pvalue > 0.001
    assert counts.min() > 0.9 * 20_000 / num_shards


# ---- 9. offline reading ------------------------------------------------------------------------------------


def build_store(tmp_path: Path, capacity: int = 1000) -> tuple[ReplaySection, list[ShardStore], pa.Table]:
    cfg = ReplaySection(
        num_shards=2, segment_rows=16,
        tables={
            "transitions": TableSection(kind="transitions", obs_dim=4, capacity=capacity),
            "text": TableSection(kind="text", capacity=1000),
            "empty": TableSection(kind="feedback"),
        },
    )
    stores = [ShardStore(cfg, tmp_path, shard=s, seed=0) for s in range(2)]
    sent = []
    for k in range(12):
        rb = cartpole_batch(10, 10 * k, actor=f"actor{k % 3}", version=2 + k // 4)
        sent.append(rb)
        shard = shard_of(rb.column("id").to_pylist(), 2)
        for s, store in enumerate(stores):
            part = rb.filter(pa.array(shard == s))
            if part.num_rows:
                store.add("transitions", part)
    text = to_record_batch("text", schema_for("text"), text_rows(30, 0, sources=("corpus", "corpus", "feedback")))
    shard = shard_of(text.column("id").to_pylist(), 2)
    for s, store in enumerate(stores):
        store.add("text", text.filter(pa.array(shard == s)))
    return cfg, stores, pa.Table.from_batches(sent)


def test_read_table_returns_the_live_rows_of_every_shard(tmp_path):
    cfg, stores, sent = build_store(tmp_path)
    got = read_table(tmp_path, "transitions", cfg)
    assert got.num_rows == 120
    assert sorted(got.column("id").to_pylist()) == sorted(sent.column("id").to_pylist())
    # each shard's rows in insertion order, shards in order
    expected = [i for store in stores for i in store.export("transitions").column("id").to_pylist()]
    assert got.column("id").to_pylist() == expected
    assert got.schema.equals(stores[0].tables["transitions"].schema)
    assert read_table(tmp_path, "empty", cfg).num_rows == 0
    with pytest.raises(ValueError, match="unknown table 'nope'"):
        read_table(tmp_path, "nope", cfg)


def test_read_table_matches_the_store_after_evictions(tmp_path):
    cfg, stores, _ = build_store(tmp_path, capacity=40)  # 20 rows per shard, segments of 16 deleted
    got = read_table(tmp_path, "transitions", cfg).column("id").to_pylist()
    expected = [i for store in stores for i in store.export("transitions").column("id").to_pylist()]
    assert got == expected
    assert len(got) == sum(store.tables["transitions"].size for store in stores) == 40


def test_inspect_reports_rows_versions_sources_and_disk(tmp_path):
    cfg, stores, _ = build_store(tmp_path)
    for store in stores:
        store.close()
    report = inspect(tmp_path, cfg)
    tr = report["transitions"]
    assert tr["rows"] == 120 and tr["shards"] == 2 and tr["capacity"] == 1000 and tr["sampler"] == "uniform"
    assert (tr["oldest_policy_version"], tr["newest_policy_version"]) == (2, 4)
    assert tr["sources"] == {"rollout": 120}
    segs = sorted(tmp_path.glob("shard-*/transitions/seg-*.arrow"))
    assert len({p.parent.parent for p in segs}) == 2
    assert tr["disk_bytes"] == sum(p.stat().st_size for p in segs)
    assert tr["disk_bytes"] == sum(store.info()["transitions"]["disk_bytes"] for store in stores)
    tx = report["text"]
    assert tx["rows"] == 30 and tx["sources"] == {"corpus": 20, "feedback": 10}
    assert (tx["oldest_policy_version"], tx["newest_policy_version"]) == (1, 1)
    assert report["empty"] == {
        "rows": 0, "capacity": 100_000, "sampler": "uniform", "oldest_policy_version": None,
        "newest_policy_version": None, "sources": {}, "disk_bytes": 0, "shards": 2,
    }


def test_to_parquet_round_trips(tmp_path):
    cfg, _, _ = build_store(tmp_path / "replay")
    table = read_table(tmp_path / "replay", "transitions", cfg)
    path = to_parquet(table, tmp_path / "out" / "transitions.parquet")
    assert path.is_file()
    back = pq.read_table(path)
    assert back.schema.equals(table.schema)
    assert back.equals(table)
    text = read_table(tmp_path / "replay", "text", cfg)
    assert pq.read_table(to_parquet(text, tmp_path / "text.parquet")).equals(text)


def test_to_hf_dataset_holds_the_rows(tmp_path):
    datasets = pytest.importorskip("datasets")
    cfg, _, _ = build_store(tmp_path)
    table = read_table(tmp_path, "transitions", cfg)
    ds = to_hf_dataset(table)
    assert isinstance(ds, datasets.Dataset)
    assert len(ds) == 120 and ds.column_names == table.schema.names
    assert list(ds["id"]) == table.column("id").to_pylist()
    row = ds[0]
    assert row["id"] == table.column("id")[0].as_py()
    assert row["obs"] == pytest.approx(table.column("obs")[0].as_py())
    assert row["policy_version"] == table.column("policy_version")[0].as_py()
