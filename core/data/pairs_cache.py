"""The People's Daily pair task as a CSV in the cache directory, made once per size and reused.

Every process that loads `data.builtin: people_daily_pairs` (the driver, the
gate, each traffic actor) reads the same file; the pairs are drawn with a fixed
seed, so a process on another node that makes its own copy gets the same rows.
The file is written under a temporary name and renamed, so a reader never sees
half of it.  `EVOLVE_CACHE_DIR` moves the cache (default: $XDG_CACHE_HOME/evolve,
else ~/.cache/evolve).
"""

from __future__ import annotations

import os
import uuid
from pathlib import Path

PAIRS_SEED = 0


def cache_dir() -> Path:
    explicit = os.environ.get("EVOLVE_CACHE_DIR")
    if explicit:
        return Path(explicit)
    base = os.environ.get("XDG_CACHE_HOME") or str(Path.home() / ".cache")
    return Path(base) / "evolve"


def people_daily_pairs_csv(per_label: int | None = None, directory: Path | None = None) -> Path:
    """The CSV (`text`, `text_pair`, `label`) of `per_label` pairs per label (None: as many as there are)."""
    from core.data.pairs import people_daily_pairs, write_pairs_csv

    directory = directory or cache_dir()
    path = directory / f"people_daily_pairs-{per_label or 'all'}-seed{PAIRS_SEED}.csv"
    if path.is_file():
        return path
    tmp = path.with_name(f".{path.name}.{uuid.uuid4().hex[:8]}.tmp")
    write_pairs_csv(tmp, people_daily_pairs(per_label, seed=PAIRS_SEED))
    os.replace(tmp, path)  # atomic: concurrent makers write the same rows, the last rename wins
    return path
