"""Policy-gradient learning of a served causal LM from its completions' feedback, as a train-loop objective.

Batches come from the loop's `completions` replay table (learners/completion_source.py): each row's
feedback made a reward by the config's rule (core/data/completion_rewards.py), the prompt and
completion padded, with the log-probability the sampling version gave each completion token.  One
update:

    advantages   group-relative where a batch holds several rated completions of one prompt (or a
                 preference's pair), else the reward less a running mean (core/stats/advantages.py)
    loss         PPO-clipped (and dual-clipped) ratios against the logged log-probabilities, plus
                 `kl_coef` x the exact per-token KL to a frozen reference version (learners/pg_loss.py)
    step         AdamW after the gradient norm is clipped to `grad_clip`

The model runs with dropout off while it learns (eval mode; gradients flow all the same): the ratio
then measures how far the weights moved, and is exactly 1 on a sample of the current weights.  A
non-finite loss or gradient norm is refused on every rank (no step, counted as `skipped_nonfinite`),
so a NaN never reaches the weights, a candidate or an export.  Every `candidate_every` updates rank 0
hands a candidate to the gate handle; the gate decides what goes live.
"""

from __future__ import annotations

import math
import time
from dataclasses import dataclass
from typing import Any

import numpy as np
import torch

from core.config.generate import GenerateSection
from core.models.generator import causal_lm_files, causal_lm_from_files
from core.stats.advantages import GroupRewards, RunningBaseline, advantages
from learners.completion_source import CompletionBatch
from learners.objective import ExportedPolicy, WorkerContext
from learners.pg_loss import clipped_pg_loss, next_token_logprobs


@dataclass
class PGSetup:
    """What every worker needs (pickled into the Train loop config): the version it starts from and
    the reference of its KL penalty, each as the registry stores a causal LM (weights + files)."""

    section: GenerateSection
    weights: dict[str, Any]  # the start version's state dict (tensors or numpy arrays)
    files: dict[str, bytes]  # its config.json and tokenizer files (core/models/generator.py)
    reference_weights: dict[str, Any] | None = None  # None: the start version is the reference
    parent_version: int | None = None  # the version it starts from (lineage)
    reference_version: int | None = None  # the reference's version (lineage); None: parent_version
    # Opaque handle with submit.remote(policy_id, weights, files, metadata); None = no candidates.
    gate: Any = None
    seed: int = 0
    loop: str = ""


def _frozen(model: torch.nn.Module) -> torch.nn.Module:
    for p in model.parameters():
        p.requires_grad_(False)
    return model.eval()


class PolicyGradientObjective:
    name = "policy_gradient"
    summed_metrics = ("rows", "completions", "tokens", "dropped_rows", "updates", "idle")

    def setup(self, config: PGSetup, ctx: WorkerContext) -> None:
        self.setup_, self.cfg, self.ctx = config, config.section.learning, ctx
        torch.manual_seed(config.seed)
        self.model, self.tokenizer = causal_lm_from_files(_tensors(config.weights), config.files)
        self.model.to(ctx.device).eval()  # dropout off: see the module docstring
        ref_weights = config.weights if config.reference_weights is None else config.reference_weights
        self.reference = _frozen(causal_lm_from_files(_tensors(ref_weights), config.files)[0].to(ctx.device))
        self.train_model = ctx.wrap_model(self.model)  # DDP when world_size > 1
        self.optimizer = torch.optim.AdamW(self.model.parameters(), lr=self.cfg.lr, weight_decay=self.cfg.weight_decay)
        self.baseline = RunningBaseline(self.cfg.baseline_init, self.cfg.baseline_decay)
        self.group_rewards = GroupRewards()  # a group's rated completions come in different batches
        self.updates = self.skipped = self.idle = self.candidates = self.candidates_dropped = 0
        self.last: dict[str, float] = dict.fromkeys(
            ("loss", "pg_loss", "kl", "ratio", "clipped_share", "reward", "advantage_abs", "grad_norm",
             "grouped_share"), math.nan)

    # ---- one step ----------------------------------------------------------------------
    def step(self, batch: CompletionBatch | None) -> dict[str, float]:
        dropped = float(batch.dropped) if batch is not None else 0.0
        rows = float(batch.rows) if batch is not None else 0.0
        # Under DDP every rank must run the same forward/backward: all have completions, or none steps.
        if not self._all(batch is not None and len(batch) > 0):
            self.idle += 1
            return self._metrics(idle=1.0, dropped_rows=dropped, rows=rows)
        figures = self._update(batch)
        if figures.get("updates") and self.updates % self.cfg.candidate_every == 0:
            self._candidate()
        return self._metrics(rows=rows, dropped_rows=dropped, completions=float(len(batch)), **figures)

    def _update(self, batch: CompletionBatch) -> dict[str, float]:
        dev = self.ctx.device
        t = {k: v.to(dev) for k, v in batch.tensors.items()}
        reward = batch.tensors["reward"].numpy()
        names = [batch.groups[c] for c in batch.tensors["group"].tolist()]
        self.group_rewards.add(names, batch.keys or [str(i) for i in range(len(names))], reward)
        adv, grouped = advantages(reward, names, self.baseline.value, self.cfg.group_std,
                                  pools=self.group_rewards.pools(names))
        logp_all = next_token_logprobs(self.train_model(input_ids=t["input_ids"], attention_mask=t["attention_mask"]).logits)
        ref = None
        if self.cfg.kl_coef > 0:
            with torch.no_grad():
                ref = next_token_logprobs(self.reference(input_ids=t["input_ids"], attention_mask=t["attention_mask"]).logits)
        loss, parts = clipped_pg_loss(logp_all, ref, t, torch.from_numpy(adv).to(dev), self.cfg.clip_epsilon,
                                      self.cfg.dual_clip, self.cfg.kl_coef)
        self.optimizer.zero_grad(set_to_none=True)
        if not self._all(bool(torch.isfinite(loss))):
            self.skipped += 1
            return {}
        loss.backward()
        # DDP has averaged the gradients: every rank sees the same norm and takes the same branch
        norm = torch.nn.utils.clip_grad_norm_(self.model.parameters(), self.cfg.grad_clip)
        if not bool(torch.isfinite(norm)):
            self.optimizer.zero_grad(set_to_none=True)
            self.skipped += 1
            return {}
        self.optimizer.step()
        self.updates += 1
        absolute = ~batch.tensors["relative"].numpy()
        self.baseline.update(reward[absolute])  # after the step: a row is never its own baseline
        self.last.update(loss=float(loss.detach()), pg_loss=float(parts["pg"]), kl=float(parts["kl"]),
                         ratio=float(parts["ratio"]), clipped_share=float(parts["clipped_share"]),
                         grad_norm=float(norm), advantage_abs=float(np.abs(adv).mean()),
                         grouped_share=float(grouped.mean()),
                         reward=float(reward[absolute].mean()) if absolute.any() else math.nan)
        return {"updates": 1.0, "tokens": float(parts["tokens"])}

    def _metrics(self, **counts: float) -> dict[str, float]:
        return {**dict.fromkeys(self.summed_metrics, 0.0), **counts, **self.last, "baseline": self.baseline.value,
                "skipped_nonfinite": float(self.skipped), "candidates": float(self.candidates)}

    def _all(self, flag: bool) -> bool:
        """The flag on every rank (one all_reduce); the plain value when alone."""
        if self.ctx.world_size == 1:
            return flag
        import torch.distributed as dist

        t = torch.tensor([1.0 if flag else 0.0], device=self.ctx.device)
        dist.all_reduce(t, op=dist.ReduceOp.MIN)
        return bool(t.item() > 0.5)

    # ---- candidates --------------------------------------------------------------------------
    def _candidate(self) -> None:
        if self.ctx.rank != 0 or self.setup_.gate is None:
            return
        weights, files = causal_lm_files(self.model, self.tokenizer)
        if not all(bool(torch.isfinite(w).all()) for w in weights.values() if w.is_floating_point()):
            self.candidates_dropped += 1  # never hand the gate a broken model
            return
        numpy_weights = {k: v.cpu().numpy() for k, v in weights.items()}
        self.setup_.gate.submit.remote(self.setup_.section.policy_id, numpy_weights, files, self.metadata())
        self.candidates += 1

    def metadata(self) -> dict[str, Any]:
        reference = self.setup_.reference_version or self.setup_.parent_version
        return {
            "parent_version": self.setup_.parent_version,
            "updates": self.updates,
            "metrics": {**{k: v for k, v in self.last.items() if v == v}, "baseline": self.baseline.value,
                        "skipped_nonfinite": self.skipped},
            "data_range": {"table": self.setup_.section.table("completions"), "world_size": self.ctx.world_size},
            "info": {"objective": self.name, "loop": self.setup_.loop, "reference_version": reference,
                     "submitted_at": time.time()},
        }

    # ---- the rest of the Objective protocol ----------------------------------------------
    def evaluate(self) -> dict[str, float]:
        return {"updates": float(self.updates), "skipped_nonfinite": float(self.skipped),
                "candidates": float(self.candidates), "loss": self.last["loss"], "kl": self.last["kl"],
                "reward": self.last["reward"]}

    def state_dict(self) -> dict[str, Any]:
        return {"model": self.model.state_dict(), "optimizer": self.optimizer.state_dict(),
                "counters": {"updates": self.updates, "skipped": self.skipped, "idle": self.idle,
                             "candidates": self.candidates, "candidates_dropped": self.candidates_dropped},
                "baseline": self.baseline.value, "last": dict(self.last)}

    def load_state_dict(self, state: dict[str, Any]) -> None:
        self.model.load_state_dict(state["model"])
        self.optimizer.load_state_dict(state["optimizer"])
        for k, v in state["counters"].items():
            setattr(self, k, int(v))
        self.baseline.value = float(state["baseline"])
        self.last.update({k: float(v) for k, v in state["last"].items()})

    def export_policy(self) -> ExportedPolicy:
        weights, files = causal_lm_files(self.model, self.tokenizer)
        bad = [k for k, v in weights.items() if v.is_floating_point() and not bool(torch.isfinite(v).all())]
        if bad:  # cannot happen through step(); refuse rather than publish a broken model
            raise ValueError(f"refusing to export non-finite weights: {bad[:3]}")
        meta = self.metadata()
        return ExportedPolicy(weights={k: v.cpu() for k, v in weights.items()}, files=files,
                              metrics={"updates": float(self.updates),
                                       **{k: float(v) for k, v in meta["metrics"].items() if v == v}},
                              info={**meta["info"], "parent_version": self.setup_.parent_version,
                                    "data_range": meta["data_range"]})


def _tensors(weights: dict[str, Any]) -> dict[str, torch.Tensor]:
    return {k: v if isinstance(v, torch.Tensor) else torch.from_numpy(np.asarray(v)) for k, v in weights.items()}
