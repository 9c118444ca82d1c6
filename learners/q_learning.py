"""Q-learning objectives on the shared train loop: the common part, and the tabular rule.

Both learn from replay-store transitions (`learners.replay_source`), publish
every `learning.publish_every` updates from rank 0, and checkpoint through the
train loop.  Evaluation is not theirs: an evaluator actor plays each
published version greedily, so `evaluate()` only reports counters.

Publishing goes through an opaque handle (the serving layer's publisher):
learners never import serving, they call `publisher.publish.remote(...)`.
"""

from __future__ import annotations

import json
import time
from dataclasses import dataclass
from typing import Any

import torch

from core.config.rl import RLSection
from core.models.q import PolicySpec, build_model
from learners.objective import ExportedPolicy, WorkerContext


@dataclass
class QSetup:
    """What every worker needs to build a Q objective (pickled into the Train loop config)."""

    rl: RLSection
    spec: dict[str, Any]  # PolicySpec.to_dict()
    publisher: Any = None  # actor handle with publish.remote(policy_id, weights, metadata, spec, published_at)
    # Where |TD| priorities go: a ReplayTransitionSource of a prioritized table, else None.
    priorities: Any = None
    loop: str = ""  # the loop's name: its metrics' tag and its versions' lineage


class QObjectiveBase:
    """Counters, publishing, metrics and state shared by DQN and tabular Q."""

    name = "q"
    summed_metrics = ("samples", "updates")

    def setup(self, config: QSetup, ctx: WorkerContext) -> None:
        self.setup_, self.cfg, self.ctx = config, config.rl, ctx
        self.spec = PolicySpec.from_dict(config.spec)
        self.model = build_model(self.spec).to(ctx.device)
        self.updates = 0  # successful updates of this worker (== every worker's, in lockstep)
        self.skipped = 0  # non-finite losses refused
        self.last_loss = float("nan")
        self.published: list[float] = []
        self._metrics = _learner_metrics(config.loop) if ctx.rank == 0 else None
        self._rate = (time.monotonic(), 0)

    # ---- one step ----------------------------------------------------------------------
    def step(self, batch: dict[str, torch.Tensor]) -> dict[str, float]:
        batch = {k: v.to(self.ctx.device, non_blocking=True) for k, v in batch.items()}
        loss, td = self.update(batch)
        if td is not None and self.setup_.priorities is not None:
            self.setup_.priorities.update_priorities(batch["key"].cpu(), td.abs().cpu())
        if loss is None:
            self.skipped += 1
        else:
            self.updates += 1
            self.last_loss = loss
            if self.ctx.rank == 0 and self.updates % self.cfg.learning.publish_every == 0:
                self.publish()
        self._observe()
        return {"loss": self.last_loss, "samples": float(len(batch["action"])), "updates": 1.0 if loss is not None else 0.0,
                "skipped_nonfinite": float(self.skipped)}

    def update(self, batch: dict[str, torch.Tensor]) -> tuple[float | None, torch.Tensor | None]:
        """One learning update; (loss, per-row TD errors) or (None, None) when the loss is not finite."""
        raise NotImplementedError

    def bootstrap_discount(self, batch: dict[str, torch.Tensor]) -> torch.Tensor | float:
        """Per row gamma**k (k rewards in the row's return), gamma**n where the row does not say."""
        full = self.cfg.learning.gamma**self.cfg.learning.n_step
        disc = batch.get("discount")
        if disc is None:
            return full
        return torch.where(torch.isnan(disc), torch.full_like(disc, full), disc)

    # ---- publishing --------------------------------------------------------------------
    def weights(self) -> dict[str, torch.Tensor]:
        return {k: v.detach().cpu().clone() for k, v in self.model.state_dict().items()}

    def publish(self) -> None:
        if self.setup_.publisher is None:
            return
        weights = self.weights()
        if not all(torch.isfinite(w).all() for w in weights.values()):
            return  # never publish a broken model; the registry would refuse it anyway
        meta = {
            "metrics": {"loss": self.last_loss} if self.last_loss == self.last_loss else {},
            "data_range": {"updates": self.updates, "table": self.cfg.table},
            "info": {"objective": self.name, "env_id": self.cfg.env_id, "loop": self.setup_.loop},
        }
        self.setup_.publisher.publish.remote(self.cfg.policy_id, weights, meta, self.spec.to_dict(), time.time())
        self.published.append(time.time())

    def _observe(self) -> None:
        if self._metrics is None or self.updates % 50:
            return
        now = time.monotonic()
        t0, u0 = self._rate
        self._rate = (now, self.updates)
        tags = {"loop": self.setup_.loop}
        self._metrics["updates_per_s"].set((self.updates - u0) / max(now - t0, 1e-9), tags=tags)
        if self.last_loss == self.last_loss:
            self._metrics["loss"].set(self.last_loss, tags=tags)

    # ---- the rest of the Objective protocol ------------------------------------------
    def evaluate(self) -> dict[str, float]:
        return {"updates": float(self.updates), "loss": self.last_loss, "skipped_nonfinite": float(self.skipped)}

    def state_dict(self) -> dict[str, Any]:
        return {"model": self.model.state_dict(), "updates": torch.tensor(self.updates)}

    def load_state_dict(self, state: dict[str, Any]) -> None:
        self.model.load_state_dict(state["model"])
        self.updates = int(state["updates"])

    def export_policy(self) -> ExportedPolicy:
        return ExportedPolicy(
            weights=self.weights(),
            files={"spec.json": json.dumps(self.spec.to_dict()).encode()},
            metrics={"updates": float(self.updates)},
            info={"objective": self.name, "env_id": self.cfg.env_id},
        )


class QTableObjective(QObjectiveBase):
    """Tabular Q-learning, Q(s,a) += alpha * (r + gamma^n * max_a' Q(s',a') - Q(s,a)), on replayed batches.

    Rows of a batch that hit the same (s, a) share one averaged step; with several
    workers the table deltas are averaged across ranks so every copy stays equal.
    """

    name = "qtable"

    def update(self, batch: dict[str, torch.Tensor]) -> tuple[float | None, torch.Tensor | None]:
        q = self.model.q.data  # [S, A], no gradients
        s = batch["obs"].reshape(-1).long()
        s2 = batch["next_obs"].reshape(-1).long()
        a = batch["action"]
        target = batch["reward"] + self.bootstrap_discount(batch) * (1.0 - batch["terminated"]) * q[s2].max(dim=1).values
        td = target - q[s, a]
        if not bool(torch.isfinite(td).all()):
            return None, None
        flat = s * self.spec.n_actions + a
        total = torch.zeros(q.numel(), device=q.device).index_add_(0, flat, td)
        count = torch.zeros(q.numel(), device=q.device).index_add_(0, flat, torch.ones_like(td))
        delta = self.cfg.learning.qtable_alpha * total / count.clamp(min=1.0)
        if self.ctx.world_size > 1:
            import torch.distributed as dist

            dist.all_reduce(delta)
            delta /= self.ctx.world_size
        q.view(-1).add_(delta)
        return float((td**2).mean()), td


def _learner_metrics(loop: str) -> dict[str, Any] | None:
    """Dashboard gauges; None outside a Ray worker (unit tests)."""
    import ray

    if not ray.is_initialized():
        return None
    from ray.util import metrics

    return {
        "updates_per_s": metrics.Gauge("evolve_learner_updates_per_s", "learner updates per second (updates/s)", tag_keys=("loop",)),
        "loss": metrics.Gauge("evolve_learner_loss", "learner loss, moving (objective units)", tag_keys=("loop",)),
    }
