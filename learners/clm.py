"""Next-token (causal) language modelling as a Learner objective.

Each step predicts every token of a packed block from the tokens before it:
cross-entropy of the model's logits at positions 0..T-2 against the ids at
1..T-1.  Optimizer, schedule (warmup, linear decay), clipping, bf16 autocast
and state are masked-LM's (`learners/mlm.py`); only the model, the loss and
what is evaluated and exported differ.

Held-out evaluation scores the same fixed blocks every time: loss, perplexity
(exp of the mean loss per predicted token) and next-token accuracy.
"""

from __future__ import annotations

import json
import math
from dataclasses import dataclass
from typing import Any

import numpy as np
import torch
import torch.nn.functional as F
from torch import nn

from core.config.clm import CLMSection
from learners.mlm import MLMObjective, _as_ids
from learners.objective import ExportedPolicy, WorkerContext


@dataclass
class CLMSetup:
    """Everything a worker needs to build the causal objective (pickled into the Train loop config)."""

    clm: CLMSection
    model_config: dict[str, Any]  # the causal config's to_dict(); ignored when pretrained_dir is set
    pretrained_dir: str | None
    tokenizer_files: dict[str, bytes]
    heldout: np.ndarray  # [n, seq_len] int32 packed blocks
    info: dict[str, Any]  # lineage: corpus, tokenizer, model facts

    @property
    def section(self) -> CLMSection:
        return self.clm


class NextTokenLoss(nn.Module):
    """Mean cross-entropy of each position's prediction of the next id; forward(ids [B, T]) ->
    (loss, correct predictions).  DDP wraps this module, so it sees the whole computation."""

    def __init__(self, lm: nn.Module):
        super().__init__()
        self.lm = lm

    def forward(self, ids: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        logits = self.lm(input_ids=ids).logits[:, :-1]  # packed blocks: no padding, no attention mask
        targets = ids[:, 1:]
        loss = F.cross_entropy(logits.reshape(-1, logits.shape[-1]).float(), targets.reshape(-1))
        return loss, (logits.argmax(-1) == targets).sum()


class CLMObjective(MLMObjective):
    name = "clm"
    summed_metrics = ("tokens", "predicted")

    def build_model(self, config: CLMSetup) -> nn.Module:
        from core.models.causal_lm import build_causal_lm, load_pretrained_causal_lm

        if config.pretrained_dir:
            return load_pretrained_causal_lm(config.pretrained_dir)
        return build_causal_lm(config.model_config, seed=config.clm.seed)

    def loss_module(self, config: CLMSetup, ctx: WorkerContext) -> nn.Module:
        return NextTokenLoss(self.model)

    def step(self, batch: Any) -> dict[str, float]:
        ids = _as_ids(batch).to(self.ctx.device, non_blocking=True)  # [B, T]
        self.core.train()
        with torch.autocast(self.ctx.device.type, dtype=torch.bfloat16, enabled=self.autocast):
            loss, correct = self.train_core(ids)
        self.optimizer.zero_grad(set_to_none=True)
        loss.backward()
        grad_norm = torch.nn.utils.clip_grad_norm_(self.model.parameters(), self.cfg.grad_clip)
        self.optimizer.step()
        self.scheduler.step()
        predicted = ids[:, 1:].numel()
        return {
            "loss": float(loss.detach()),
            "accuracy": float(correct) / predicted,
            "grad_norm": float(grad_norm),
            "lr": self.scheduler.get_last_lr()[0],
            "tokens": float(ids.numel()),
            "predicted": float(predicted),
        }

    @torch.no_grad()
    def evaluate(self, batch_size: int = 64) -> dict[str, float]:
        """Loss, perplexity and next-token accuracy on the first `eval_sequences` held-out blocks."""
        self.core.eval()
        heldout = torch.tensor(self.setup_.heldout[: self.cfg.eval_sequences], dtype=torch.long)
        total_loss, correct, count = 0.0, 0, 0
        for start in range(0, len(heldout), batch_size):
            ids = heldout[start : start + batch_size].to(self.ctx.device)
            with torch.autocast(self.ctx.device.type, dtype=torch.bfloat16, enabled=self.autocast):
                loss, right = self.core(ids)  # the bare module: no DDP collectives
            n = ids[:, 1:].numel()
            total_loss += float(loss) * n
            correct += int(right)
            count += n
        mean = total_loss / max(count, 1)
        return {"eval_loss": mean, "perplexity": math.exp(min(mean, 50.0)),
                "next_token_accuracy": correct / max(count, 1), "eval_predicted": float(count)}

    def export_policy(self) -> ExportedPolicy:
        """The whole causal LM (a tied tensor once), its config and its tokenizer: what
        `core.models.causal_lm.load_causal_lm` reads back."""
        from core.models.causal_lm import export_weights

        config = self.model.config.to_dict()
        files = {**self.setup_.tokenizer_files,
                 "config.json": json.dumps(config, indent=2, sort_keys=True, default=str).encode()}
        return ExportedPolicy(weights=export_weights(self.model), files=files, info=dict(self.setup_.info))
