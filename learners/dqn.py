"""DQN (Mnih et al. 2015) with the usual repairs, as a train-loop objective.

Double DQN targets (van Hasselt et al. 2016): the online net picks the next
action, the target net values it; the target net is a hard copy refreshed
every `learning.target_update_every` updates.  Huber loss, n-step returns (the
actors fold n rewards into each row and stamp its bootstrap discount: gamma^n,
or gamma^k for a row an episode end cut to k rewards),
prioritized-replay importance weights on the loss and |TD| back to the store
as new priorities.  The online net runs under DDP when there are several
workers; a non-finite loss is refused (no step, nothing published).
"""

from __future__ import annotations

import copy
from typing import Any

import torch
import torch.nn.functional as F

from learners.objective import WorkerContext
from learners.q_learning import QObjectiveBase, QSetup


class DQNObjective(QObjectiveBase):
    name = "dqn"

    def setup(self, config: QSetup, ctx: WorkerContext) -> None:
        super().setup(config, ctx)
        torch.manual_seed(config.rl.seed)  # every DDP rank starts from the same weights
        self.model.load_state_dict(type(self.model)(self.spec).state_dict())
        self.target = copy.deepcopy(self.model).eval()
        for p in self.target.parameters():
            p.requires_grad_(False)
        self.train_model = ctx.wrap_model(self.model)
        self.optimizer = _adam(self.model.parameters(), config.rl.learning.lr)

    def update(self, batch: dict[str, torch.Tensor]) -> tuple[float | None, torch.Tensor | None]:
        cfg = self.cfg.learning
        q = self.train_model(batch["obs"]).gather(1, batch["action"].unsqueeze(1)).squeeze(1)
        with torch.no_grad():
            nxt = batch["next_obs"]
            chooser = self.model if cfg.double_q else self.target
            best = chooser(nxt).argmax(dim=1, keepdim=True)
            next_q = self.target(nxt).gather(1, best).squeeze(1)
            y = batch["reward"] + self.bootstrap_discount(batch) * (1.0 - batch["terminated"]) * next_q
        per_row = F.huber_loss(q, y, reduction="none", delta=cfg.huber_delta)
        loss = (batch["weight"] * per_row).mean()
        self.optimizer.zero_grad(set_to_none=True)
        if not bool(torch.isfinite(loss)):
            return None, None
        loss.backward()
        torch.nn.utils.clip_grad_norm_(self.model.parameters(), cfg.grad_clip, foreach=True)
        self.optimizer.step()
        if (self.updates + 1) % cfg.target_update_every == 0:
            self.target.load_state_dict(self.model.state_dict())
        return float(loss.detach()), (y - q).detach()

    def state_dict(self) -> dict[str, Any]:
        return {**super().state_dict(), "target": self.target.state_dict(), "optimizer": self.optimizer.state_dict()}

    def load_state_dict(self, state: dict[str, Any]) -> None:
        super().load_state_dict(state)
        self.target.load_state_dict(state["target"])
        self.optimizer.load_state_dict(state["optimizer"])


def _adam(params, lr: float) -> torch.optim.Optimizer:
    """Fused Adam where torch has it for these tensors (one kernel for all parameters
    instead of one per tensor: most of a small network's update is that overhead), else the default."""
    params = list(params)
    try:
        return torch.optim.Adam(params, lr=lr, fused=True)
    except (RuntimeError, TypeError, ValueError):
        return torch.optim.Adam(params, lr=lr)
