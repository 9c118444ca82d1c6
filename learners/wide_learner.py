"""The online learner's wide part: AdaGrad on the hashed n-gram weights, on every batch it learns from.

The wide model (core/models/wide.py) learns by online gradient descent with
per-feature step sizes, as Vowpal Wabbit does (AdaGrad; Duchi, Hazan & Singer
2011): a bucket seen often takes ever smaller steps, a rare one keeps large
steps, so the first rows that mention an n-gram move its weight at once.  Its
loss is the deep learner's (`learners.online.feedback_loss`): cross-entropy on
labeled rows, the clipped importance-weighted policy gradient on reward-only
rows.

How the loss meets the deep logits follows the part's `combine`:
  kind wide           the wide logits alone (the encoder is not run)
  wide_deep, sum      one loss on deep + wide: both parts learn jointly
  wide_deep, gate     each part on its own loss, plus the loss of the mixed,
                      detached logits, which trains only the three mixing figures;
                      when the learner is behind the stream the wide part also learns
                      the catch-up rows the deep part skips (`feedback.wide_catch_up`)

Under DDP the wide gradients are summed over ranks as dense tensors (a fixed
size, buckets x labels) so every rank keeps the same wide weights.
"""

from __future__ import annotations

from typing import Any, Callable

import torch

from core.models.wide import WidePart
from learners.objective import WorkerContext

MIX_LR = 0.05  # AdaGrad step of the gate's mixing figures: three numbers, moved gently

LossFn = Callable[[torch.Tensor], tuple[torch.Tensor, dict[str, torch.Tensor]]]


class WideTrainer:
    def __init__(self, wide: WidePart, lr: float, ctx: WorkerContext):
        self.wide, self.ctx = wide.to(ctx.device), ctx
        self.optimizer = torch.optim.Adagrad(self.wide.linear.parameters(), lr=lr)
        self.mix_optimizer = torch.optim.Adagrad([self.wide.mix], lr=MIX_LR) if wide.combine == "gate" else None

    @property
    def uses_deep(self) -> bool:
        return self.wide.uses_deep

    @property
    def catches_up(self) -> bool:
        """Whether the wide part can learn rows the deep part skips: only when each part has its own loss."""
        return self.uses_deep and self.wide.combine == "gate"

    def loss(self, texts: list[str], deep: torch.Tensor | None, loss_fn: LossFn,
             extra: tuple[list[str], LossFn] | None = None) -> tuple[torch.Tensor, torch.Tensor, dict[str, torch.Tensor]]:
        """(served logits [B, L], the loss to backpropagate, the served logits' loss parts).

        `extra`: (texts, their loss) of catch-up rows only the wide part learns (gate only).
        """
        self.wide.train()
        if extra is not None and not self.catches_up:
            raise ValueError("only a gated wide_deep part learns rows the deep part skips")
        n = len(texts)
        both = self.wide(list(texts) + list(extra[0]) if extra is not None else texts).float()
        wide = both[:n]  # [B, L]
        if deep is None or not self.uses_deep:
            loss, parts = loss_fn(wide)
            return wide, loss, parts
        if self.wide.combine == "sum":
            logits = deep + wide
            loss, parts = loss_fn(logits)
            return logits, loss, parts
        deep_loss, _ = loss_fn(deep)
        wide_loss, _ = loss_fn(wide)
        if extra is not None:  # the mean over every row the wide part learns
            m = len(both) - n
            wide_loss = (n * wide_loss + m * extra[1](both[n:])[0]) / (n + m)
        logits = self.wide.combined(deep.detach(), wide.detach())
        mix_loss, parts = loss_fn(logits)
        return logits, deep_loss + wide_loss + mix_loss, parts

    def restart_mix(self) -> None:
        """After a re-base: the mixing figures' AdaGrad history starts over (the deep weight is 0 again)."""
        if self.mix_optimizer is not None:
            self.mix_optimizer.state.clear()
            self.mix_optimizer = torch.optim.Adagrad([self.wide.mix], lr=MIX_LR)

    def zero_grad(self) -> None:
        self.optimizer.zero_grad(set_to_none=True)
        if self.mix_optimizer is not None:
            self.mix_optimizer.zero_grad(set_to_none=True)

    def grads_finite(self) -> bool:
        """After backward: every wide gradient finite (summed over ranks first under DDP)."""
        ok = True
        for p in self._params():
            if p.grad is None:
                continue
            if self.ctx.world_size > 1:
                import torch.distributed as dist

                p.grad = p.grad.to_dense() if p.grad.is_sparse else p.grad
                dist.all_reduce(p.grad)
                p.grad /= self.ctx.world_size
            g = p.grad.coalesce().values() if p.grad.is_sparse else p.grad
            ok = ok and bool(torch.isfinite(g).all())
        return ok

    def step(self) -> None:
        self.optimizer.step()
        if self.mix_optimizer is not None:
            self.mix_optimizer.step()

    def _params(self) -> list[torch.nn.Parameter]:
        return [*self.wide.linear.parameters(), *([self.wide.mix] if self.mix_optimizer is not None else [])]

    def state_dict(self) -> dict[str, Any]:
        return {"model": self.wide.state_dict(), "optimizer": self.optimizer.state_dict(),
                "mix_optimizer": self.mix_optimizer.state_dict() if self.mix_optimizer is not None else None}

    def load_state_dict(self, state: dict[str, Any]) -> None:
        self.wide.load_state_dict(state["model"])
        self.optimizer.load_state_dict(state["optimizer"])
        if self.mix_optimizer is not None and state.get("mix_optimizer") is not None:
            self.mix_optimizer.load_state_dict(state["mix_optimizer"])
