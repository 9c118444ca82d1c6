"""A loop's Ray Train learner: `trainer.fit()` in a background thread, and the board it reports on.

    LearnerRun(spec) -> ProgressBoard actor + TorchTrainer (learners.train_loop.fit) in a thread
    check()          -> a learner that failed for good (past `learner.max_failures` restarts, each
                        resuming from the last checkpoint): one `learner_failed` event, `failed` set;
                        the loop goes on degraded (serving keeps the live version), the run does not end
    drain()          -> rank 0's records into events.jsonl as the loop's events `learner_started`,
                        `learner` (progress), `learner_eval` (the objective's own held-out figures),
                        `checkpoint`, `resumed`
    stop()           -> ask the workers to stop at their next report; they checkpoint, then return

A second run with the same run directory (or run.storage) resumes: Ray Train keeps
the checkpoints under <run.storage or run dir>/train/<loop name>, a local path or a
URL (s3://...) that every node reads, so a learner restarted on another node resumes.
"""

from __future__ import annotations

import dataclasses
import threading
from typing import Any

import ray

from core.config.run import LearnerSection
from learners.train_loop import LoopSpec, ProgressBoard, fit


# The learner's records as the loop's events; `eval` stays free for what judges a loop (the RL evaluator).
EVENT_NAMES = {"progress": "learner", "eval": "learner_eval", "started": "learner_started"}


class LearnerRun:
    def __init__(self, name: str, spec: LoopSpec, placement: LearnerSection, run_dir: Any,
                 datasets: dict[str, Any] | None = None, storage_path: str | None = None):
        self.name, self.run_dir = name, run_dir
        self.board = ProgressBoard.remote()
        self.spec = dataclasses.replace(spec, board=self.board)
        self.figures: dict[str, Any] = {}  # the newest progress record
        self.heard = False  # a record came: the workers are up (their first says so)
        self.resumed_from: int | None = None
        self.outcome: dict[str, Any] = {}
        self.failed: str | None = None  # why the learner failed for good, once it has
        trainer = fit(self.spec, num_workers=placement.num_workers, use_gpu=placement.use_gpu,
                      cpus_per_worker=placement.cpus_per_worker, resources_per_worker=placement.resources_per_worker,
                      storage_path=storage_path or str((run_dir.path / "train").resolve()), name=name, datasets=datasets,
                      max_failures=placement.max_failures)
        self.thread = threading.Thread(target=self._fit, args=(trainer,), daemon=True, name=f"evolve-{name}-fit")
        self.thread.start()

    def _fit(self, trainer) -> None:
        try:
            self.outcome["result"] = trainer.fit()
        except BaseException as exc:  # reported by check()
            self.outcome["error"] = exc

    def drain(self) -> list[dict[str, Any]]:
        """New records, each also written as an event (names in the module docstring)."""
        records = get_or(self.board.drain.remote(), [])
        self.heard = self.heard or bool(records)
        for rec in records:
            fields = {k: v for k, v in rec.items() if k != "kind"}
            self.run_dir.event(self.name, EVENT_NAMES.get(rec["kind"], rec["kind"]), **fields)
            if rec["kind"] == "progress":
                self.figures = fields
            elif rec["kind"] == "resumed":
                self.resumed_from = rec.get("step")
                self.figures.setdefault("step", self.resumed_from)
        return records

    def check(self) -> str | None:
        """The reason, the first time the learner is seen failed for good; else None."""
        if "error" not in self.outcome or self.failed is not None:
            return None
        error = self.outcome["error"]
        self.failed = f"{self.name} learner failed: {' '.join(str(error).split())[:300]}"
        self.run_dir.event(self.name, "learner_failed", error=f"{type(error).__name__}: {error}")
        return self.failed

    def finished(self) -> bool:
        return not self.thread.is_alive() and "result" in self.outcome

    @property
    def result(self) -> Any:
        return self.outcome.get("result")

    def request_stop(self) -> None:
        self.board.request_stop.remote()

    def stop(self, timeout_s: float = 120) -> list[dict[str, Any]]:
        """Stop at the next report and wait for the final checkpoint; returns the last records."""
        self.request_stop()
        self.thread.join(timeout=timeout_s)
        return self.drain()


def get_or(ref: Any, default: Any, timeout_s: float = 5.0) -> Any:
    """A reply within the timeout, else `default` (the actor may be restarting)."""
    try:
        return ray.get(ref, timeout=timeout_s)
    except (ray.exceptions.GetTimeoutError, ray.exceptions.RayActorError):
        return default
