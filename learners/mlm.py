"""Masked language modelling (BERT, Devlin et al. 2019) as a Learner objective.

Each step: choose 15% of the non-special tokens afresh (dynamic masking,
RoBERTa); of those 80% become [MASK], 10% a random token, 10% stay; predict
the original token at the chosen positions.  The output projection (hidden ->
vocabulary) runs only at the chosen positions: on CPU it would otherwise cost
more than the encoder itself.  AdamW with linear warmup and linear decay,
gradient clipping, bf16 autocast on GPU.

Held-out evaluation uses a fixed generator, so the curve compares like with
like; it reports accuracy under BERT's 80/10/10 masking (the usual figure; the
10% kept tokens can be copied) and under strict masking (every chosen token is
[MASK]); `mlm.eval_masking` picks which is `masked_accuracy`.
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

from core.config.mlm import MLMSection
from core.models.encoder import encoder_hidden
from learners.encoder_publish import EncoderPublisher, InterimPublish
from learners.objective import ExportedPolicy, WorkerContext

EVAL_SEED = 1234


@dataclass
class MLMSetup:
    """Everything a worker needs to build the MLM objective (pickled into the Train loop config)."""

    mlm: MLMSection
    model_config: dict[str, Any]  # BertConfig.to_dict(); ignored when pretrained_dir is set
    pretrained_dir: str | None
    tokenizer_files: dict[str, bytes]
    special_ids: dict[str, int]  # mask, pad, cls, sep, unk
    heldout: np.ndarray  # [n, seq_len] int32 packed blocks
    info: dict[str, Any]  # lineage: corpus, tokenizer, model facts
    interim: InterimPublish | None = None  # publish better encoders while training (a classifier re-bases onto them)

    @property
    def section(self) -> MLMSection:
        return self.mlm


def choose_masks(
    ids: torch.Tensor,
    special: torch.Tensor,
    vocab_size: int,
    mask_id: int,
    gen: torch.Generator,
    mask_prob: float = 0.15,
    mask_frac: float = 0.8,
    random_frac: float = 0.1,
) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """BERT masking of ids [B, T]: returns (corrupted ids [B, T], flat positions [M], labels [M]).

    `special` is a bool table over the vocabulary: those ids are never chosen
    and never used as random replacements.  At least one position is chosen.
    """
    candidates = ~special[ids]  # [B, T]
    chosen = (torch.rand(ids.shape, generator=gen, device=ids.device) < mask_prob) & candidates
    if not bool(chosen.any()):
        # a tiny batch can draw nothing; take its first candidate rather than divide by zero
        first = int(candidates.flatten().nonzero()[0])
        chosen.view(-1)[first] = True
    positions = chosen.flatten().nonzero().squeeze(1)  # [M]
    labels = ids.flatten()[positions]
    roll = torch.rand(positions.shape, generator=gen, device=ids.device)
    out = ids.clone().flatten()
    to_mask = roll < mask_frac
    out[positions[to_mask]] = mask_id
    to_random = (roll >= mask_frac) & (roll < mask_frac + random_frac)
    if bool(to_random.any()):
        allowed = (~special).nonzero().squeeze(1)
        pick = torch.randint(len(allowed), (int(to_random.sum()),), generator=gen, device=ids.device)
        out[positions[to_random]] = allowed[pick]
    return out.view_as(ids), positions, labels


class MaskedOnlyMLM(nn.Module):
    """BertForMaskedLM whose vocabulary projection runs only at the masked positions.

    Forward returns (mean cross-entropy, logits [M, V]); DDP wraps this module
    so its gradient hooks see the whole computation.
    """

    def __init__(self, mlm: nn.Module):
        super().__init__()
        self.mlm = mlm

    def forward(self, input_ids: torch.Tensor, positions: torch.Tensor, labels: torch.Tensor):
        hidden = encoder_hidden(self.mlm.bert, input_ids)  # [B, T, H]; packed blocks: no padding
        picked = hidden.reshape(-1, hidden.shape[-1]).index_select(0, positions)  # [M, H]
        logits = self.mlm.cls(picked)  # [M, V]
        return F.cross_entropy(logits.float(), labels), logits


class MLMObjective:
    name = "mlm"
    summed_metrics = ("tokens", "masked")

    def setup(self, config: MLMSetup, ctx: WorkerContext) -> None:
        self.cfg, self.setup_ = config.section, config
        self.ctx = ctx
        self.model = self.build_model(config).to(ctx.device)
        self.core = self.loss_module(config, ctx)
        self.train_core = ctx.wrap_model(self.core)
        self.optimizer = torch.optim.AdamW(
            _param_groups(self.model, self.cfg.weight_decay), lr=self.cfg.lr, betas=(0.9, 0.98), eps=1e-6
        )
        self.scheduler = torch.optim.lr_scheduler.LambdaLR(self.optimizer, self._lr_factor)
        self.gen = torch.Generator(device=ctx.device).manual_seed(self.cfg.seed * 1000 + ctx.rank)
        self.autocast = self.cfg.bf16 if ctx.device.type == "cuda" else _cpu_bf16(self.cfg.cpu_bf16)
        interim = getattr(config, "interim", None)  # evaluate() runs on rank 0 only
        self.interim = EncoderPublisher(interim) if interim is not None and ctx.rank == 0 else None
        self.evaluations = 0

    def build_model(self, config: MLMSetup) -> nn.Module:
        """The model this objective trains (what a kind that learns another way replaces)."""
        from core.models.encoder import build_mlm_model, load_pretrained_mlm

        if config.pretrained_dir:
            return load_pretrained_mlm(config.pretrained_dir)
        return build_mlm_model(config.model_config, seed=config.mlm.seed)

    def loss_module(self, config: MLMSetup, ctx: WorkerContext) -> nn.Module:
        """The module that computes the loss from a batch (DDP wraps it)."""
        self.vocab_size = self.model.config.vocab_size
        self.special = torch.zeros(self.vocab_size, dtype=torch.bool, device=ctx.device)
        for key in ("pad", "cls", "sep", "mask", "unk"):
            if config.special_ids.get(key) is not None:
                self.special[config.special_ids[key]] = True
        self.mask_id = config.special_ids["mask"]
        return MaskedOnlyMLM(self.model)

    def _lr_factor(self, step: int) -> float:
        """Linear warmup to lr, then linear decay to 5% of lr at the horizon, flat after."""
        warmup = self.cfg.warmup_steps
        if step < warmup:
            return (step + 1) / warmup
        horizon = self.cfg.max_steps or self.cfg.decay_steps
        frac = min(1.0, (step - warmup) / max(1, horizon - warmup))
        return 1.0 - 0.95 * frac

    def _mask(self, ids: torch.Tensor, gen: torch.Generator, mask_frac: float, random_frac: float):
        return choose_masks(
            ids, self.special, self.vocab_size, self.mask_id, gen, self.cfg.mask_prob, mask_frac, random_frac
        )

    def _cut_short(self, ids: torch.Tensor) -> torch.Tensor:
        """During sequence-length warmup, [B, T] -> [B * T // s, s] (the tail that does not fill a piece is dropped)."""
        s, seen = self.cfg.short_seq_len, self.scheduler.last_epoch  # steps taken so far (survives a resume)
        if seen >= self.cfg.short_seq_steps or ids.shape[1] <= s:
            return ids
        width = ids.shape[1] // s * s
        return ids[:, :width].reshape(-1, s)

    def step(self, batch: Any) -> dict[str, float]:
        ids = self._cut_short(_as_ids(batch).to(self.ctx.device, non_blocking=True))  # [B, T]
        inputs, positions, labels = self._mask(ids, self.gen, self.cfg.mask_token_frac, self.cfg.random_token_frac)
        self.core.train()
        with torch.autocast(self.ctx.device.type, dtype=torch.bfloat16, enabled=self.autocast):
            loss, logits = self.train_core(inputs, positions, labels)
        self.optimizer.zero_grad(set_to_none=True)
        loss.backward()
        grad_norm = torch.nn.utils.clip_grad_norm_(self.model.parameters(), self.cfg.grad_clip)
        self.optimizer.step()
        self.scheduler.step()
        with torch.no_grad():
            acc = (logits.argmax(-1) == labels).float().mean()
        return {
            "loss": float(loss.detach()),
            "accuracy": float(acc),
            "grad_norm": float(grad_norm),
            "lr": self.scheduler.get_last_lr()[0],
            "tokens": float(ids.numel()),
            "masked": float(labels.numel()),
        }

    def evaluate(self, batch_size: int = 64) -> dict[str, float]:
        figures = self.heldout_figures(batch_size)
        self.evaluations += 1
        if self.interim is not None:
            version = self.interim.offer(figures, self.export_policy, self.evaluations)
            if version is not None:
                figures["published_version"] = float(version)
        return figures

    @torch.no_grad()
    def heldout_figures(self, batch_size: int = 64) -> dict[str, float]:
        """Held-out loss, perplexity and accuracy under both maskings (fixed generator: comparable points)."""
        self.core.eval()
        heldout = torch.tensor(self.setup_.heldout[: self.cfg.eval_sequences], dtype=torch.long)
        bert = self._eval_pass(heldout, batch_size, self.cfg.mask_token_frac, self.cfg.random_token_frac)
        strict = self._eval_pass(heldout, batch_size, 1.0, 0.0)
        main = bert if self.cfg.eval_masking == "bert" else strict
        return {
            "eval_loss": main[0],
            "perplexity": math.exp(min(main[0], 50.0)),
            "masked_accuracy": main[1],
            "bert_masked_accuracy": bert[1],
            "strict_masked_accuracy": strict[1],
            "strict_eval_loss": strict[0],
            "eval_masked": float(main[2]),
        }

    def _eval_pass(self, heldout: torch.Tensor, batch_size: int, mask_frac: float, random_frac: float):
        gen = torch.Generator(device=self.ctx.device).manual_seed(EVAL_SEED)
        total_loss, correct, count = 0.0, 0, 0
        for start in range(0, len(heldout), batch_size):
            ids = heldout[start : start + batch_size].to(self.ctx.device)
            inputs, positions, labels = self._mask(ids, gen, mask_frac, random_frac)
            with torch.autocast(self.ctx.device.type, dtype=torch.bfloat16, enabled=self.autocast):
                loss, logits = self.core(inputs, positions, labels)  # the bare module: no DDP collectives
            total_loss += float(loss) * labels.numel()
            correct += int((logits.argmax(-1) == labels).sum())
            count += labels.numel()
        return total_loss / max(count, 1), correct / max(count, 1), count

    def state_dict(self) -> dict[str, Any]:
        return {
            "model": self.model.state_dict(),
            "optimizer": self.optimizer.state_dict(),
            "scheduler": self.scheduler.state_dict(),
            "gen": self.gen.get_state(),
        }

    def load_state_dict(self, state: dict[str, Any]) -> None:
        self.model.load_state_dict(state["model"])
        self.optimizer.load_state_dict(state["optimizer"])
        self.scheduler.load_state_dict(state["scheduler"])
        self.gen.set_state(state["gen"])

    def export_policy(self) -> ExportedPolicy:
        """The encoder (BertModel weights) for the feedback learners; the MLM head rides along as a file."""
        from safetensors.torch import save

        encoder = {k: v.detach().cpu().contiguous() for k, v in self.model.bert.state_dict().items()}
        head = {k: v.detach().cpu().clone() for k, v in self.model.cls.state_dict().items()}
        config = self.model.config.to_dict()
        files = {
            **self.setup_.tokenizer_files,
            "config.json": json.dumps(config, indent=2, sort_keys=True, default=str).encode(),
            "mlm_head.safetensors": save(head),
        }
        return ExportedPolicy(weights=encoder, files=files, info=dict(self.setup_.info))


def _cpu_bf16(mode: str) -> bool:
    if mode != "auto":
        return mode == "on"
    try:  # Linux: the CPU's own flags; elsewhere stay in fp32
        with open("/proc/cpuinfo", encoding="ascii", errors="replace") as fh:
            flags = next((line for line in fh if line.startswith("flags")), "").split()
    except OSError:
        return False
    return "avx512_bf16" in flags or "amx_bf16" in flags


def _as_ids(batch: Any) -> torch.Tensor:
    """Batches are [B, T] id tensors, or dicts holding one under 'input_ids' (Ray Data)."""
    if isinstance(batch, dict):
        batch = batch["input_ids"]
    return torch.as_tensor(batch).long()


def _param_groups(model: nn.Module, weight_decay: float) -> list[dict[str, Any]]:
    """No weight decay on biases and LayerNorm weights (BERT's recipe)."""
    decay, no_decay = [], []
    for name, p in model.named_parameters():
        if not p.requires_grad:
            continue
        (no_decay if p.ndim < 2 or "LayerNorm" in name else decay).append(p)
    return [{"params": decay, "weight_decay": weight_decay}, {"params": no_decay, "weight_decay": 0.0}]
