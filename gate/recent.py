"""The gate's recent slice: the newest labeled feedback, held out of training, as a second test set.

The fixed held-out set says what the model knew; after the traffic moves to
new data it no longer says what the model must know now.  The feedback
joiner keeps a share of labeled feedback (`adapt.recent_fraction`, by the gate's
`Slices` rule) out of the replay store, so the learner never trains on it, and
hands it to the gate.  With enough of it (`adapt.recent_min`):

    a candidate      must not be worse than live on the recent slice (the same paired test
                     as on the fixed set, which now guards against forgetting)

(The rollback guard pairs versions on all of live's labeled feedback instead: both versions only
answer it, neither trains on it: gate/stages/rollback.py.)

Plain logic; the gate keeps one per policy with `adapt.enabled`.  `score(model, examples)` is the
policy kind's: each labeled example answered right or not.
"""

from __future__ import annotations

import threading
from collections import deque
from typing import Any, Callable, Iterable, Sequence

import numpy as np

from core.config.gate import GateSection
from core.stats.paired import GateResult, compare

Score = Callable[[Any, Sequence[tuple[Any, int]]], np.ndarray]  # (model, examples) -> [N] bool


class RecentSlice:
    def __init__(self, size: int, min_rows: int, score: Score):
        self.rows: deque[tuple[Any, int]] = deque(maxlen=size)
        self.min_rows, self.score = min_rows, score
        # the joiner's rows arrive on another gate thread while a candidate is scored
        self._lock = threading.Lock()

    def add(self, rows: Iterable[Sequence[Any]]) -> None:
        new = [(x, int(y)) for x, y in rows]
        with self._lock:
            self.rows.extend(new)

    def snapshot(self) -> list[tuple[Any, int]]:
        """The rows now: both sides of a comparison are scored on the same ones."""
        with self._lock:
            return list(self.rows)

    def ready(self) -> bool:
        with self._lock:
            return len(self.rows) >= self.min_rows

    def compare(self, candidate: Any, live: Any, cfg: GateSection, seed: int = 0) -> GateResult:
        rows = self.snapshot()
        return compare(self.score(candidate, rows), self.score(live, rows), test=cfg.test,
                       tolerance=cfg.tolerance, alpha=cfg.alpha, bootstrap_samples=cfg.bootstrap_samples, seed=seed)
