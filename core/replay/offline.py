"""Read a replay directory without Ray: inspect it, export a table.

Works on the segment files a run left behind (running or not): the live rows
of a table are those after its recorded head, within capacity.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import pyarrow as pa
import pyarrow.compute as pc
import pyarrow.parquet as pq

from core.config.replay import ReplaySection, per_shard
from core.replay.segments import read_head, scan


def shard_dirs(replay_dir: Path) -> list[Path]:
    return sorted(p for p in Path(replay_dir).glob("shard-*") if p.is_dir())


def read_table(replay_dir: str | Path, table: str, cfg: ReplaySection) -> pa.Table:
    """The live rows of `table` across all shards (each shard oldest first)."""
    if table not in cfg.tables:
        raise ValueError(f"unknown table {table!r}; declared tables: {sorted(cfg.tables)}")
    tcfg = per_shard(cfg.tables[table], cfg.num_shards)
    from core.data.schemas import schema_for

    schema = schema_for(tcfg.kind, obs_dim=tcfg.obs_dim) if tcfg.kind == "transitions" else schema_for(tcfg.kind)
    # read against the declared schema: segments written before a nullable column was added
    # (e.g. feedback's text_pair) get it as nulls, so old and new segments concatenate
    parts = [_live_rows(d / table, tcfg.capacity, schema) for d in shard_dirs(Path(replay_dir))]
    parts = [p for p in parts if p is not None and p.num_rows]
    return pa.concat_tables(parts) if parts else schema.empty_table()


def _live_rows(table_dir: Path, capacity: int, schema: pa.Schema | None = None) -> pa.Table | None:
    if not table_dir.is_dir():
        return None
    batches, start = [], None
    for seg, seg_batches in scan(table_dir, schema):
        if start is None and seg.rows:
            start = seg.start
        batches += [b for b in seg_batches if b.num_rows]
    if not batches:
        return None
    table = pa.Table.from_batches(batches)
    tail = start + table.num_rows
    head = max(read_head(table_dir), tail - capacity, start)
    return table.slice(head - start)


def inspect(replay_dir: str | Path, cfg: ReplaySection) -> dict[str, dict[str, Any]]:
    """Per table: live rows, policy-version range, sources, disk bytes, shards."""
    out = {}
    for name in cfg.tables:
        rows = read_table(replay_dir, name, cfg)
        disk = sum(f.stat().st_size for d in shard_dirs(Path(replay_dir)) for f in (d / name).glob("*") if f.is_file())
        versions = rows.column("policy_version") if rows.num_rows else None
        out[name] = {
            "rows": rows.num_rows,
            "capacity": cfg.tables[name].capacity,
            "sampler": cfg.tables[name].sampler,
            "oldest_policy_version": pc.min(versions).as_py() if versions is not None else None,
            "newest_policy_version": pc.max(versions).as_py() if versions is not None else None,
            "sources": _counts(rows.column("source")) if rows.num_rows else {},
            "disk_bytes": disk,
            "shards": len(shard_dirs(Path(replay_dir))),
        }
    return out


def _counts(column: pa.ChunkedArray) -> dict[str, int]:
    return {d["values"]: d["counts"] for d in pc.value_counts(column).to_pylist()}


def to_parquet(table: pa.Table, path: str | Path) -> Path:
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    pq.write_table(table, path)
    return path


def to_hf_dataset(table: pa.Table):
    """A `datasets.Dataset` over the rows (for offline analysis and training)."""
    import datasets

    return datasets.Dataset(table)
