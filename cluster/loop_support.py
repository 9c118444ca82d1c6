"""What every loop driver needs: its Ray Train learner in a background thread, and tolerant polls."""

from __future__ import annotations

import threading
from typing import Any

import numpy as np
import ray

from learners.train_loop import LoopSpec, fit


class LearnerRun:
    """`trainer.fit()` of a loop's learner in a daemon thread; `check()` re-raises its failure."""

    def __init__(self, name: str, spec: LoopSpec, learner: Any, run_dir: Any):
        self.name = name
        self.outcome: dict[str, Any] = {}
        trainer = fit(spec, num_workers=learner.num_workers, use_gpu=learner.use_gpu,
                      cpus_per_worker=learner.cpus_per_worker, resources_per_worker=learner.resources_per_worker,
                      storage_path=str((run_dir.path / "train").resolve()), name=name)
        self.thread = threading.Thread(target=self._fit, args=(trainer,), daemon=True, name=f"evolve-{name}-fit")
        self.thread.start()

    def _fit(self, trainer) -> None:
        try:
            self.outcome["result"] = trainer.fit()
        except BaseException as exc:  # reported by check()
            self.outcome["error"] = exc

    def check(self) -> None:
        if "error" in self.outcome:
            raise RuntimeError(f"{self.name} learner failed: {' '.join(str(self.outcome['error']).split())[:300]}")

    def finished(self) -> bool:
        return not self.thread.is_alive() and "result" in self.outcome

    def join(self, timeout_s: float = 120) -> None:
        self.thread.join(timeout=timeout_s)  # the learner checkpoints before it returns


def get_or(ref, default):
    """A reply within 5 s, else the previous figures (an actor may be restarting)."""
    try:
        return ray.get(ref, timeout=5.0)
    except (ray.exceptions.GetTimeoutError, ray.exceptions.RayActorError):
        return default


def mean_or_none(values: list[Any]) -> float | None:
    vals = [v for v in values if v is not None]
    return float(np.mean(vals)) if vals else None


def round_or_none(value: float | None, digits: int = 1) -> float | None:
    return None if value is None or value != value else round(float(value), digits)
