"""The online learner's side of the gate's adaptation: follow its `learner_boost` decisions.

Every ADAPT_POLL_EVERY updates the learner asks the gate (non-blocking) for
its newest decision; a new one is applied once, on every rank at the same
update (an all-reduce of the decision id), for the number of updates it
says: the learning rate times `lr_factor`, a smaller rehearsal share,
candidates more often, and the weight of the continual masked-LM loss
(learners/domain_mlm.py).  Then the section's own settings return.

Each answer also carries the controller's memory level (`memory_level`: how
many times a refusal streak during a drift raised the learner's memory): the
rehearsal share and the distillation weight in force are the section's raised
by that many steps (core/config/memory.py `raised_memory`), above a boost's
fresher share too, for the rest of the run.
"""

from __future__ import annotations

from typing import Any

import torch

from core.adapt.controller import Boost
from core.config.feedback import FeedbackSection
from core.config.memory import raised_memory
from learners.objective import WorkerContext

ADAPT_POLL_EVERY = 10  # updates between asking the gate for a new adaptation decision


class BoostFollower:
    def __init__(self, fb: FeedbackSection, gate: Any, optimizer: torch.optim.Optimizer, ctx: WorkerContext):
        self.fb, self.gate, self.optimizer, self.ctx = fb, gate, optimizer, ctx
        self.share, self.candidate_every = fb.learning.rehearsal, fb.learning.candidate_every  # in force now
        self.domain_mlm = 0.0
        self.level = 0  # the controller's memory level applied
        self.left, self.adapted = 0, 0  # updates the current boost still lasts; the decision applied
        self._ref: Any = None
        self._decisions: dict[int, dict[str, Any]] = {}  # heard from the gate, by id

    def after_update(self, updates: int) -> None:
        """Every rank, in lockstep: count the boost down; every ADAPT_POLL_EVERY updates apply the
        newest decision every rank has heard of."""
        if self.left:
            self.left -= 1
            if not self.left:
                self.reset()
        if updates % ADAPT_POLL_EVERY:
            return
        self._hear_gate()
        newest = max(self._decisions, default=0)
        level = max((int(d.get("memory_level", 0)) for d in self._decisions.values()), default=0)
        if self.ctx.world_size > 1:  # apply only what every rank has heard, at the same update
            import torch.distributed as dist

            t = torch.tensor([float(newest), float(level)], device=self.ctx.device)
            dist.all_reduce(t, op=dist.ReduceOp.MIN)
            newest, level = int(t[0].item()), int(t[1].item())
        self.level = max(self.level, level)
        if newest > self.adapted and newest in self._decisions:
            boost = next((a for a in self._decisions[newest]["actions"] if a["action"] == "learner_boost"), None)
            self.adapted = newest
            if boost is not None:
                b = Boost.from_action(boost)
                self.left = b.updates
                self._set(b.lr_factor, b.rehearsal, b.candidate_every, b.domain_mlm)

    def reset(self) -> None:
        """The section's own settings (also for a resumed learner: it starts unboosted)."""
        self._set(1.0, self.fb.learning.rehearsal, self.fb.learning.candidate_every)

    @property
    def rehearsal(self) -> float:
        """The share of a batch rehearsed now: the boost's or the section's, raised by the memory level."""
        raised, _ = raised_memory(self.fb.learning.rehearsal, self.fb.learning.memory.distill,
                                  self.fb.adapt.refusals, self.level)
        return max(self.share, raised) if self.level else self.share

    @property
    def distill(self) -> float:
        """The weight of the distillation term now."""
        return raised_memory(self.fb.learning.rehearsal, self.fb.learning.memory.distill, self.fb.adapt.refusals,
                             self.level)[1]

    def metrics(self) -> dict[str, float]:
        return {"lr": float(self.optimizer.param_groups[0]["lr"]), "boost_left": float(self.left),
                "adapted": float(self.adapted), "domain_mlm": self.domain_mlm, "rehearsal": self.rehearsal,
                "distill": self.distill, "memory_level": float(self.level)}

    def _hear_gate(self) -> None:
        if self.gate is None or not hasattr(getattr(self.gate, "adaptation", None), "remote"):
            return
        if self._ref is not None and answered(self._ref):
            import ray

            try:
                decision = ray.get(self._ref) if isinstance(self._ref, ray.ObjectRef) else self._ref
            except Exception:  # the gate is restarting: ask again next time
                decision = None
            if decision:
                self._decisions[int(decision["id"])] = decision
            self._ref = None
        if self._ref is None:
            self._ref = self.gate.adaptation.remote(self.fb.policy_id)

    def _set(self, lr_factor: float, rehearsal: float, candidate_every: int, domain_mlm: float = 0.0) -> None:
        for group in self.optimizer.param_groups:
            group["lr"] = self.fb.learning.lr * lr_factor
        self.share, self.candidate_every, self.domain_mlm = rehearsal, candidate_every, domain_mlm


def answered(ref: Any) -> bool:
    """Has the gate answered a call?  (Non-Ray handles in tests answer at once.)"""
    if ref is None:
        return True
    import ray

    if not isinstance(ref, ray.ObjectRef):
        return True
    ready, _ = ray.wait([ref], timeout=0)
    return bool(ready)
