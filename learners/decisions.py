"""The decision learner: the hashed linear scorer trained on joined decisions (the `decisions` table).

    DecisionSource(sampler, table, rows).batches(ctx, seed) -> DecisionRows (or None while quiet)
    DecisionObjective.step(rows): each row's request rebuilt from its context and actions (the JSON
        the app stored), one importance-weighted regression step on the served action
        (core/decisions/linear.py) with its logged propensity and reward

Every `candidate_every` steps (the train loop's evaluation) rank 0 hands the gate a candidate.
Each worker learns from its own rows, one at a time, as Vowpal Wabbit does; with several workers
the weights and AdaGrad's sums are averaged every `sync_every` steps (VW's allreduce does the
same between its nodes).  A row whose request no longer parses (written by another version of
the app) is skipped and counted, never a failed step.  The exported policy is the registry
files of core/decisions/files.py, with the running squared error and mean reward as metrics.
"""

from __future__ import annotations

import json
import time
from dataclasses import dataclass, field
from typing import Any, Iterator

import numpy as np
import pyarrow as pa
import torch

from core.config.decisions import DecisionExploreSection, DecisionModelSection
from core.decisions.features import FeatureError
from core.decisions.files import policy_files
from core.decisions.policy import DecisionPolicy
from learners.feedback_source import FeedbackSampler, FeedbackSource
from learners.objective import ExportedPolicy, WorkerContext


@dataclass
class DecisionRows:
    rows: list[dict[str, Any]]

    def __len__(self) -> int:
        return len(self.rows)

    def take(self, idx) -> "DecisionRows":
        return DecisionRows([self.rows[int(i)] for i in idx])


def decision_rows(rb: pa.RecordBatch) -> DecisionRows:
    return DecisionRows(rb.select(["context", "actions", "chosen", "propensity", "reward"]).to_pylist())


@dataclass
class DecisionSource:
    sampler: FeedbackSampler
    table: str
    rows: int
    prefetch: int = 2
    sample_timeout_s: float = 2.0
    idle_after_s: float = 1.0

    def batches(self, ctx: WorkerContext, seed: int) -> Iterator[DecisionRows | None]:
        yield from FeedbackSource(self.sampler, self.table, self.rows, prefetch=self.prefetch,
                                  sample_timeout_s=self.sample_timeout_s, idle_after_s=self.idle_after_s,
                                  convert=decision_rows).batches(ctx, seed)


@dataclass
class DecisionLearnConfig:
    model: DecisionModelSection
    explore: DecisionExploreSection
    sync_every: int = 20  # steps between averaging the workers' weights (several workers only)
    # Opaque handle with submit.remote(policy_id, weights, files, metadata); None = no candidates.
    gate: Any = None
    policy_id: str = ""
    parent_version: int | None = None
    loop: str = ""


@dataclass
class DecisionObjective:
    name: str = "decisions"
    summed_metrics: tuple[str, ...] = ("rows", "skipped")
    policy: DecisionPolicy | None = None
    ctx: WorkerContext = field(default_factory=WorkerContext)
    steps: int = 0
    _sq_error: float = 0.0
    _reward: float = 0.0
    _seen: int = 0
    candidates: int = 0
    _seen_at_candidate: int = 0

    def setup(self, config: DecisionLearnConfig, ctx: WorkerContext) -> None:
        self.config, self.ctx = config, ctx
        self.policy = DecisionPolicy(config.model, config.explore)

    def step(self, batch: DecisionRows | None) -> dict[str, float]:
        if batch is None:
            return {"rows": 0, "skipped": 0}
        errors, rewards, skipped = [], [], 0
        for row in batch.rows:
            try:
                req = self.policy.request(json.loads(row["context"]), json.loads(row["actions"]))
            except (FeatureError, ValueError, TypeError):
                skipped += 1
                continue
            if not 0 <= row["chosen"] < len(req.ids):
                skipped += 1
                continue
            errors.append(self.policy.learn(req, row["chosen"], float(row["reward"]), float(row["propensity"])))
            rewards.append(float(row["reward"]))
        self.steps += 1
        if self.ctx.world_size > 1 and self.steps % self.config.sync_every == 0:
            self._average()
        self._seen += len(errors)
        self._sq_error += sum(errors)
        self._reward += sum(rewards)
        out = {"rows": len(errors), "skipped": skipped}
        if errors:
            out.update(loss=float(np.mean(errors)), mean_reward=float(np.mean(rewards)))
        return out

    def _average(self) -> None:
        import torch.distributed as dist

        scorer = self.policy.scorer
        for name in ("weights", "squares"):
            t = torch.from_numpy(getattr(scorer, name))
            dist.all_reduce(t)  # in place on the array's memory
            t /= self.ctx.world_size

    def evaluate(self) -> dict[str, float]:
        """The running figures of the rows learned so far; on rank 0 with a gate, a candidate when
        rows were learned since the last (the gate judges it on decisions it was not trained on)."""
        if self.ctx.rank == 0 and self.config.gate is not None and self._seen > self._seen_at_candidate:
            weights, files = policy_files(self.policy)
            self.config.gate.submit.remote(self.config.policy_id, {k: np.array(v) for k, v in weights.items()}, files,
                                           self._metadata())
            self.candidates += 1
            self._seen_at_candidate = self._seen
        if not self._seen:
            return {}
        return {"squared_error": self._sq_error / self._seen, "mean_reward": self._reward / self._seen,
                "rows_learned": float(self._seen), "candidates": float(self.candidates)}

    def _metadata(self) -> dict[str, Any]:
        return {"parent_version": self.config.parent_version, "updates": self.policy.scorer.updates,
                "metrics": {"squared_error": self._sq_error / max(self._seen, 1),
                            "mean_reward": self._reward / max(self._seen, 1)},
                "info": {"objective": self.name, "loop": self.config.loop, "submitted_at": time.time()}}

    def state_dict(self) -> dict[str, Any]:
        return {"scorer": {k: torch.from_numpy(np.array(v)) for k, v in self.policy.scorer.state().items()},
                "steps": self.steps, "running": [self._sq_error, self._reward, self._seen, self.candidates]}

    def load_state_dict(self, state: dict[str, Any]) -> None:
        self.policy.scorer.load({k: v.numpy() for k, v in state["scorer"].items()})
        self.steps = int(state["steps"])
        self._sq_error, self._reward, self._seen, self.candidates = state["running"]
        self._seen, self.candidates = int(self._seen), int(self.candidates)
        self._seen_at_candidate = self._seen

    def export_policy(self) -> ExportedPolicy:
        weights, files = policy_files(self.policy)
        return ExportedPolicy({k: torch.from_numpy(np.array(v)) for k, v in weights.items()}, files,
                              metrics=self.evaluate(), info={"kind": "decision", "updates": self.policy.scorer.updates})
