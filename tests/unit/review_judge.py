"""One judge per test process: trained once into a temporary directory, shared by the tests that read it."""

from __future__ import annotations

import tempfile
from functools import lru_cache
from pathlib import Path

from core.models.judge import Judge, save_judge, train_judge


@lru_cache(maxsize=1)
def judge_file() -> tuple[Judge, Path]:
    """The judge and the file it was saved to (left for the process's temp dir to clean)."""
    judge = train_judge()
    path = save_judge(judge, Path(tempfile.mkdtemp(prefix="evolve-judge-")) / "judge.npz")
    return judge, path
