"""`evolve replay inspect RUN_DIR` and `evolve replay export`: a run's replay store, offline.

Reads the segment files directly (no Ray), so it works on a finished run and
beside a live one.
"""

from __future__ import annotations

from pathlib import Path

from cluster.errors import UserError
from core.config.evolve import EvolveConfig
from core.config.loader import load_config
from core.replay import offline
from core.storage.paths import RunStorage, is_url


def _run_replay(run_dir: str) -> tuple[EvolveConfig, Path]:
    path = Path(run_dir)
    if not (path / "config.yaml").is_file():
        raise UserError(f"{path} is not a run directory (no config.yaml)")
    cfg = load_config(path / "config.yaml")
    # where the run kept it: replay.dir, else run.storage/replay, else <run dir>/replay
    replay_dir = RunStorage.resolve(cfg.run.storage, cfg.registry.uri, cfg.replay.dir, path).replay
    if is_url(replay_dir):
        raise UserError(f"{path}: its replay store is at {replay_dir}; offline inspect and export read "
                        "local or shared-filesystem directories only")
    if not Path(replay_dir).is_dir():
        raise UserError(f"{path}: no replay store at {replay_dir}")
    return cfg, Path(replay_dir)


def inspect_run(run_dir: str) -> int:
    cfg, replay_dir = _run_replay(run_dir)
    report = offline.inspect(replay_dir, cfg.replay)
    print(f"replay store {replay_dir} ({cfg.replay.num_shards} shard(s))")
    print(f"{'table':<14}{'rows':>10}{'capacity':>11}  {'sampler':<12}{'versions':<14}{'disk':>10}  sources")
    for name, t in report.items():
        versions = "-" if t["oldest_policy_version"] is None else f"{t['oldest_policy_version']}..{t['newest_policy_version']}"
        sources = ", ".join(f"{k}={v}" for k, v in t["sources"].items()) or "-"
        print(f"{name:<14}{t['rows']:>10}{t['capacity']:>11}  {t['sampler']:<12}{versions:<14}{_size(t['disk_bytes']):>10}  {sources}")
    return 0


def export_run(run_dir: str, table: str, out: str) -> int:
    cfg, replay_dir = _run_replay(run_dir)
    if table not in cfg.replay.tables:
        raise UserError(f"unknown table {table!r}; tables of this run: {sorted(cfg.replay.tables)}")
    rows = offline.read_table(replay_dir, table, cfg.replay)
    path = offline.to_parquet(rows, out)
    print(f"wrote {rows.num_rows} rows of {table!r} to {path}")
    return 0


def _size(n: int) -> str:
    for unit in ("B", "KiB", "MiB", "GiB"):
        if n < 1024 or unit == "GiB":
            return f"{n:.0f} {unit}" if unit == "B" else f"{n:.1f} {unit}"
        n /= 1024
    return str(n)
