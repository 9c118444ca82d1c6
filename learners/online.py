"""Online learning of the served text classifier from live feedback, as a train-loop objective.

Each batch mixes fresh joined feedback (the replay store's feedback table,
`learners.feedback_source.FeedbackSource`) with a `rehearsal` share replayed
from a bounded reservoir of older feedback this learner has seen.  A row is
learned from in one of two ways:

* labeled (the user said which class): cross-entropy on the label;
* reward only (the user said right / wrong, r in [0, 1]): an off-policy
  policy-gradient step on the served prediction a, with the clipped
  inverse-propensity estimator (clipped IPS / truncated importance sampling;
  Ionides 2008, Bottou et al. 2013, the off-policy REINFORCE correction of
  Chen et al. 2019):

      loss_i = -pg_weight * w_i * (r_i - b) * log pi(a_i | x_i)
      w_i    = min(pi(a_i | x_i) / mu(a_i | x_i), max_importance_weight)   (no gradient through w)

  mu is the probability a was served with (logged with the event when
  `serving.exploration` samples answers, core/stats/exploration.py);
  pi is the model being trained.  w * grad log pi = grad pi / mu, so without
  the clip this is an unbiased estimate of the gradient of the expected
  reward under pi from data logged under mu; the clip trades a little bias
  for bounded variance when mu(a) was small.  (When serving answers argmax,
  mu is the served model's confidence rather than a true propensity; the
  ratio then acts as a trust region that fades the update once pi has moved
  far from the served model.)  b is a running mean of past rewards, a
  control variate: it does not change the expected gradient (sum_a grad pi =
  0) but lets wrong answers (r < b) push probability away.  It starts at 0.5,
  the middle of the reward range (what guessing earns on two classes).
  On two labels a reward of 1 or 0 says which label is right (the served one or
  the other), so with `learning.reward_as_label` (the default) such a row is
  learned as labeled: a full-information row, not a bandit one.

The rehearsal rows come from a buffer that is a uniform reservoir or one
balanced over groups and time (`learning.memory.buffer`, learners/rehearsal.py),
and with `learning.memory.distill` > 0 the loss adds a pull toward the live
version's answers on them (learning without forgetting, learners/distill.py).

When the gate's drift detector acts (the loop's `adapt`), the learner applies
the controller's `learner_boost` for a bounded number of updates: the learning
rate times `lr_factor`, a smaller rehearsal share, candidates more often.  A
refusal streak during a drift raises the rehearsal share and the distillation
weight instead (learners/online_boost.py).

A classifier with a wide part (the loop's `model.kind` wide / wide_deep) also
trains it on every batch, with the same loss (learners/wide_learner.py).

Both kinds of rows count equally in the batch mean.  A non-finite loss or
gradient is refused on every rank (no step, counted), so no NaN weights are
ever trained into the model, handed to the gate or exported.  Every
`candidate_every` updates rank 0 hands a candidate to the gate handle; the
gate, not the learner, decides what goes live.
"""

from __future__ import annotations

import math
import time
from collections import deque
from dataclasses import dataclass
from typing import Any

import numpy as np
import torch

from core.config.feedback import FeedbackSection
from core.models.classifier import ClassifierBundle, ClassifierError, from_encoder, from_version
from core.models.wide import new_wide
from learners.distill import LiveReference, distill_loss
from learners.feedback_loss import feedback_loss
from learners.feedback_source import FeedbackBatch
from learners.objective import ExportedPolicy, WorkerContext
from learners.data_window import DataWindow
from learners.domain_mlm import DomainMLM
from learners.online_boost import ADAPT_POLL_EVERY, BoostFollower, answered
from learners.rebase import EncoderFeed, Rebaser, rebase
from learners.rehearsal import new_memory, restore_memory
from learners.wide_learner import WideTrainer


@dataclass
class OnlineSetup:
    """What every worker needs to build the online objective (pickled into the Train loop config).

    Start from an encoder (files = tokenizer files + config.json, weights = a
    BertModel state dict or None for a random init; `labels` required) or
    from a classifier version (files include labels.json; weights = the whole
    classifier: resume from the registry's live version).
    """

    fb: FeedbackSection
    files: dict[str, bytes]
    weights: dict[str, Any] | None = None  # numpy arrays or tensors
    labels: list[str] | None = None
    parent_version: int | None = None  # the classifier version this run continues from (lineage)
    # Opaque handle with submit.remote(policy_id, weights, files, metadata); None = no candidates.
    gate: Any = None
    heldout: list[tuple[str, int]] | None = None  # a few rows for evaluate()'s curve; the gate has its own
    seed: int = 0
    loop: str = ""  # the loop's name (the lineage says which loop made a version)
    groups: dict[Any, str] | None = None  # each traffic input's group (a balanced rehearsal buffer's strata)
    encoders: EncoderFeed | None = None  # an MLM loop's encoders to re-base onto (learners/rebase.py)


def split_batch(batch_size: int, rehearsal: float) -> tuple[int, int]:
    """(fresh rows, rehearsal rows) of a batch: the source asks the store for the fresh part."""
    replay = min(batch_size - 1, int(round(batch_size * rehearsal)))
    return batch_size - replay, replay


def build_bundle(setup: OnlineSetup) -> ClassifierBundle:
    files, fb = setup.files, setup.fb
    if "labels.json" in files:  # a classifier version
        if setup.weights is None:
            raise ClassifierError("a classifier version needs its weights")
        bundle = from_version(setup.weights, files)  # with its wide part, if it has one
        if setup.labels is not None and list(setup.labels) != bundle.labels:
            raise ClassifierError(f"the version's labels {bundle.labels} differ from the data's {list(setup.labels)}")
        return bundle
    if not setup.labels:
        raise ClassifierError("starting from an encoder needs the label names")
    bundle = from_encoder(setup.weights, files, setup.labels, fb.model.max_len, seed=setup.seed,
                          pairs=fb.data.text_pair_column is not None)
    bundle.wide = new_wide(fb.model, len(bundle.labels))  # model.kind wide / wide_deep
    return bundle


def _may_distill(fb: FeedbackSection) -> bool:
    """Distillation is on, or a refusal streak may turn it on."""
    refusals = fb.adapt.refusals
    return fb.learning.memory.distill > 0 or (fb.adapt.enabled and refusals.streak > 0 and refusals.distill_step > 0)


def _tensors(rows: FeedbackBatch, dev: torch.device) -> dict[str, torch.Tensor]:
    return {k: torch.from_numpy(getattr(rows, k)).to(dev) for k in ("label", "prediction", "reward", "logged_p")}


class OnlineObjective:
    name = "online"
    summed_metrics = ("samples", "updates", "fresh_rows", "rehearsal_rows", "wide_only_rows", "labeled_rows",
                      "reward_rows", "reward_label_rows", "idle")

    def setup(self, config: OnlineSetup, ctx: WorkerContext) -> None:
        self.setup_, self.fb, self.ctx = config, config.fb, ctx
        self.bundle = build_bundle(config)
        self.labels = self.bundle.labels
        self.model = self.bundle.model.to(ctx.device)
        self.bundle.place(ctx.device, bf16=self.fb.learning.bf16)  # the held-out evaluation runs there too
        self.autocast = self.bundle.bf16
        self.train_model = ctx.wrap_model(self.model)  # DDP when world_size > 1
        self.optimizer = torch.optim.AdamW(self.model.parameters(), lr=self.fb.learning.lr, weight_decay=config.fb.learning.weight_decay)
        wide = self.bundle.wide
        self.wide = WideTrainer(wide, self.fb.model.wide_lr, ctx) if wide is not None else None
        self.uses_deep = self.wide is None or self.wide.uses_deep  # kind wide never runs the encoder
        self.fresh_rows, self.rehearsal_rows = split_batch(self.fb.learning.batch_size, self.fb.learning.rehearsal)
        memory = config.fb.learning.memory
        self.reservoir = new_memory(config.fb.learning.reservoir_size, memory.buffer, memory.era_rows, config.groups)
        self.backlog: deque[FeedbackBatch] = deque()
        self.updates = self.skipped = self.idle = self.candidates = self.candidates_dropped = 0
        self.baseline = config.fb.learning.baseline_init
        self.last: dict[str, float] = {"loss": math.nan, "ce_loss": math.nan, "pg_loss": math.nan,
                                       "mlm_loss": math.nan, "distill_loss": math.nan,
                                       "train_accuracy": math.nan, "importance_weight": math.nan,
                                       "clipped_share": math.nan}
        self.window = DataWindow()  # rows learned from since the last candidate
        self.total = DataWindow()  # ... since the start of the run (survives resume)
        self._files = self.bundle.files()
        self._gate_ref: Any = None
        self.boost = BoostFollower(self.fb, config.gate, self.optimizer, ctx)  # the gate's learner_boost
        self.domain_mlm: DomainMLM | None = None  # built at the first boost that asks for it
        # the live version's answers for the distillation term (the deep classifier only)
        self.reference = LiveReference(self.model, ctx) if self.wide is None and _may_distill(self.fb) else None
        feed = config.encoders
        self.rebaser = Rebaser(feed, self._files, ctx.rank, ctx.world_size) if feed is not None else None
        self._reseed()

    def _reseed(self) -> None:
        # per rank and per update: resumed ranks do not replay each other's draws
        self.rng = np.random.default_rng([self.setup_.seed, self.ctx.rank, self.updates])

    # ---- one step ----------------------------------------------------------------------
    def step(self, batch: FeedbackBatch | None) -> dict[str, float]:
        if batch is not None and len(batch):
            self.backlog.append(batch)
        while len(self.backlog) > self.fb.learning.max_backlog:  # too far ahead: learn those rows by rehearsal only
            self.reservoir.add(self.backlog.popleft(), self.rng)
        fresh = self.backlog.popleft() if self.backlog else None
        # Under DDP every rank must run the same forward/backward: wait until all have data.
        if not self._all(fresh is not None):
            if fresh is not None:
                self.backlog.appendleft(fresh)
            self.idle += 1
            return self._metrics(idle=1.0)
        # a catch-up batch (learners/feedback_source.py): the wide part learns every row, the rest
        # of the model the newest batch's worth, as if it had been handed that batch alone
        deep_fresh, wide_only = self._catch_up(fresh)
        # rehearsal rows are drawn before the fresh rows join the reservoir: they are older
        k = int(round(len(deep_fresh) * self.boost.rehearsal / (1.0 - self.boost.rehearsal)))
        old = self.reservoir.sample(k, self.rng)
        self.reservoir.add(fresh, self.rng)
        rows = FeedbackBatch.concat([deep_fresh, old])
        updated, figures = self._update(rows, wide_only, rehearsed=len(old))
        if updated:
            learned = FeedbackBatch.concat([rows, wide_only]) if wide_only is not None else rows
            self.window.add(learned, len(fresh))
            self.total.add(learned, len(fresh))
            if self.updates % self.boost.candidate_every == 0 or self.updates == self.fb.learning.first_candidate:
                self._candidate()
            self.boost.after_update(self.updates)
            if self.reference is not None and self.updates % ADAPT_POLL_EVERY == 0:
                self.reference.follow()
            if self.rebaser is not None:
                self._follow_encoders()
        return self._metrics(samples=float(len(rows)), updates=float(updated), fresh_rows=float(len(fresh)),
                             rehearsal_rows=float(len(old)),
                             wide_only_rows=float(len(wide_only) if wide_only is not None else 0), **figures)

    def _follow_encoders(self) -> None:
        """Re-base onto a newer encoder of the run's MLM loop (every rank at the same update)."""
        version = self.rebaser.newer(self.updates)
        if version is None:
            return
        weights = self.rebaser.load(version)
        if weights is None:
            return
        try:
            rebase(self.bundle, weights, seed=self.setup_.seed + version)
        except RuntimeError as exc:  # a shape the config check did not catch: keep the current encoder
            self.rebaser.refused[version] = " ".join(str(exc).split())[:200]
            return
        self.optimizer.state.clear()  # fresh moments: the old ones belong to another encoder
        if self.wide is not None:
            self.wide.restart_mix()
        self.rebaser.took(version)

    def _catch_up(self, fresh: FeedbackBatch) -> tuple[FeedbackBatch, FeedbackBatch | None]:
        """(the rows the whole model learns: the newest batch's worth, the older ones only the wide part learns)."""
        if self.wide is None or not self.wide.catches_up or len(fresh) <= self.fresh_rows:
            return fresh, None
        cut = len(fresh) - self.fresh_rows
        return fresh.take(np.arange(cut, len(fresh))), fresh.take(np.arange(cut))

    def _update(self, rows: FeedbackBatch, wide_only: FeedbackBatch | None = None,
                rehearsed: int = 0) -> tuple[bool, dict[str, float]]:
        """One step on `rows` (its last `rehearsed` rows drawn from the rehearsal buffer)."""
        dev = self.ctx.device
        self.model.train()
        ids = mask = logits = None
        if self.uses_deep or self.boost.domain_mlm > 0:
            ids, mask, types = self.bundle.encode(rows.text)  # types: 0 / 1 per side of a pair
        if self.uses_deep:
            with torch.autocast(dev.type, dtype=torch.bfloat16, enabled=self.autocast):
                logits = self.train_model(ids.to(dev), mask.to(dev), types.to(dev))
            logits = logits.float()  # [B, L]; the loss in float32
        def loss_on(batch: FeedbackBatch):  # the feedback loss of these rows, as a function of their logits
            table = _tensors(batch, dev)
            return lambda lg: feedback_loss(lg, table, self.baseline, self.fb.learning.pg_weight,
                                            self.fb.learning.max_importance_weight,
                                            self.fb.learning.reward_as_label)

        loss_fn = loss_on(rows)

        if self.wide is None:
            loss, parts = loss_fn(logits)
        else:
            extra = (wide_only.text, loss_on(wide_only)) if wide_only is not None else None
            logits, loss, parts = self.wide.loss(rows.text, logits, loss_fn, extra)
        if self.boost.domain_mlm > 0:  # continual MLM on these rows' texts while the boost lasts
            if self.domain_mlm is None:
                self.domain_mlm = DomainMLM(self.model, self.bundle.tokenizer, self.fb.learning.lr, self.setup_.seed)
            mlm_loss = self.domain_mlm.loss(self.model, ids.to(dev), mask.to(dev))
            self.last["mlm_loss"] = float(mlm_loss.detach())
            loss = loss + self.boost.domain_mlm * mlm_loss
        if self.reference is not None and self.boost.distill > 0 and rehearsed > 0:  # learning without forgetting
            old = slice(len(rows) - rehearsed, len(rows))
            live = self.reference.logits(ids[old].to(dev), mask[old].to(dev), types[old].to(dev))
            kl = distill_loss(logits[old], live, self.fb.learning.memory.distill_temperature)
            self.last["distill_loss"] = float(kl.detach())
            loss = loss + self.boost.distill * kl
        labeled, bandit = parts["labeled"], parts["bandit"]
        n_lab, n_bandit = int(labeled.sum()), int(bandit.sum())
        figures = {"labeled_rows": float(n_lab), "reward_rows": float(n_bandit),
                   "reward_label_rows": float(parts["from_reward"].sum())}
        finite, any_rows = self._agree(bool(torch.isfinite(loss)), n_lab + n_bandit > 0)
        self.optimizer.zero_grad(set_to_none=True)
        if self.wide is not None:
            self.wide.zero_grad()
        if not finite or not any_rows:
            self.skipped += int(not finite)  # an empty batch (no usable rows anywhere) is not a fault
            return False, figures
        loss.backward()
        # DDP has averaged the gradients, so every rank sees the same norm and takes the same branch
        norm = torch.nn.utils.clip_grad_norm_(self.model.parameters(), self.fb.learning.grad_clip)
        wide_ok = self.wide.grads_finite() if self.wide is not None else True  # summed over ranks too
        if not bool(torch.isfinite(norm)) or not wide_ok:
            self.optimizer.zero_grad(set_to_none=True)
            self.skipped += 1
            return False, figures
        if self.uses_deep or self.boost.domain_mlm > 0:
            self.optimizer.step()
        if self.wide is not None:
            self.wide.step()
        if self.boost.domain_mlm > 0 and self.domain_mlm is not None:
            self.domain_mlm.step()
        self.updates += 1

        with torch.no_grad():
            self.last["loss"] = float(loss.detach())
            if n_lab:
                self.last["ce_loss"] = float(parts["ce"][labeled].mean())
                self.last["train_accuracy"] = float((logits[labeled].argmax(-1) == parts["label"][labeled]).float().mean())
            if n_bandit:
                w = parts["weight"][bandit]
                self.last["pg_loss"] = float(parts["pg"][bandit].mean())
                self.last["importance_weight"] = float(w.mean())
                self.last["clipped_share"] = float((parts["ratio"][bandit] > w).float().mean())
                # the baseline moves after the step: a row never serves as its own baseline
                r = float(parts["reward"][bandit].mean())
                d = self.fb.learning.baseline_decay ** n_bandit
                self.baseline = d * self.baseline + (1.0 - d) * r
        self.window.loss_sum += float(loss.detach())
        self.window.updates += 1
        return True, figures

    def _metrics(self, **counts: float) -> dict[str, float]:
        base = {k: 0.0 for k in self.summed_metrics}
        if self.rebaser is not None:
            base["encoder_version"] = float(self.rebaser.version or 0)
            base["rebases"] = float(self.rebaser.rebases)
        return {**base, **counts, **self.last, "baseline": self.baseline, "skipped_nonfinite": float(self.skipped),
                "reservoir": float(len(self.reservoir)), "backlog": float(len(self.backlog)), **self.boost.metrics()}

    # ---- ranks agree -----------------------------------------------------------------------
    def _all(self, flag: bool) -> bool:
        return self._agree(flag, True)[0]

    def _agree(self, every: bool, some: bool) -> tuple[bool, bool]:
        """(flag on every rank, flag on some rank): one all_reduce; plain values when alone."""
        if self.ctx.world_size == 1:
            return every, some
        import torch.distributed as dist

        t = torch.tensor([1.0 if every else 0.0, 0.0 if some else 1.0], device=self.ctx.device)
        dist.all_reduce(t, op=dist.ReduceOp.MIN)  # min of "not some" = not (some on any rank)
        return bool(t[0].item() > 0.5), bool(t[1].item() < 0.5)

    # ---- candidates --------------------------------------------------------------------------
    def numpy_weights(self) -> dict[str, np.ndarray]:
        return {k: (v.detach().float() if v.is_floating_point() else v.detach()).cpu().numpy().copy()
                for k, v in self.bundle.weights().items()}  # the wide part's too

    def _candidate(self) -> None:
        # all ranks: the data range of the update window, summed over ranks
        window = self.window.reduced(self.ctx)
        self.window = DataWindow()
        answer = self._submit(window) if self.ctx.rank == 0 and self.setup_.gate is not None else None
        if self.reference is not None:  # every rank: the distillation reference if the gate makes it live
            self.reference.snapshot(self.updates, self.model, answer)

    def _submit(self, window: DataWindow) -> Any:
        """Rank 0: hand the gate a candidate; the gate's answer to come (None: dropped)."""
        if self.fb.learning.skip_when_gate_busy and not answered(self._gate_ref):
            self.candidates_dropped += 1
            return None
        weights = self.numpy_weights()
        if not all(np.isfinite(w).all() for w in weights.values() if np.issubdtype(w.dtype, np.floating)):
            self.candidates_dropped += 1  # never hand the gate a broken model
            return None
        self._gate_ref = self.setup_.gate.submit.remote(self.fb.policy_id, weights, self._files, self.metadata(window))
        self.candidates += 1
        return self._gate_ref

    def metadata(self, window: "DataWindow | None" = None) -> dict[str, Any]:
        window = window or self.window
        return {
            "parent_version": self.setup_.parent_version,
            "updates": self.updates,
            "metrics": {
                "train_loss": window.mean_loss(),
                **{k: v for k, v in self.last.items() if v == v and k != "loss"},
                "baseline": self.baseline,
                "skipped_nonfinite": self.skipped,
            },
            "data_range": {"table": self.fb.table("feedback"), "window": window.to_json(), "total": self.total.to_json(),
                           "world_size": self.ctx.world_size},
            "info": {"objective": self.name, "loop": self.setup_.loop, "labels": self.labels, "submitted_at": time.time(),
                     **self._encoder_info()},
        }

    def _encoder_info(self) -> dict[str, Any]:
        """Which of the run's encoders this classifier is on (the summary groups gate decisions by it)."""
        if self.rebaser is None:
            return {}
        return {"encoder_policy": self.rebaser.feed.policy_id, "encoder_version": self.rebaser.version}

    # ---- the rest of the Objective protocol ----------------------------------------------
    def evaluate(self) -> dict[str, float]:
        out = {"updates": float(self.updates), "skipped_nonfinite": float(self.skipped),
               "candidates": float(self.candidates), "loss": self.last["loss"]}
        if self.setup_.heldout:
            texts = [t for t, _ in self.setup_.heldout]
            truth = np.array([y for _, y in self.setup_.heldout])
            out["heldout_accuracy"] = float((self.bundle.predict_proba(texts).argmax(1) == truth).mean())
        return out

    def state_dict(self) -> dict[str, Any]:
        return {
            "model": self.model.state_dict(),
            "optimizer": self.optimizer.state_dict(),
            "counters": {"updates": self.updates, "skipped": self.skipped, "idle": self.idle,
                         "candidates": self.candidates, "candidates_dropped": self.candidates_dropped,
                         "adapted": self.boost.adapted},
            "baseline": self.baseline,
            "last": dict(self.last),
            "reservoir": self.reservoir.state_dict(),
            "total": self.total.state_dict(),
            "wide": self.wide.state_dict() if self.wide is not None else None,
            "encoder": {"version": self.rebaser.version, "rebases": self.rebaser.rebases} if self.rebaser else None,
        }

    def load_state_dict(self, state: dict[str, Any]) -> None:
        self.model.load_state_dict(state["model"])
        self.optimizer.load_state_dict(state["optimizer"])
        self.boost.reset()  # a resumed learner starts unboosted
        for k, v in state["counters"].items():
            setattr(self.boost if k == "adapted" else self, k, int(v))
        self.baseline = float(state["baseline"])
        self.last.update({k: float(v) for k, v in state["last"].items()})
        restore_memory(self.reservoir, state["reservoir"])
        self.total = DataWindow.from_state(state["total"])
        if self.wide is not None and state.get("wide") is not None:
            self.wide.load_state_dict(state["wide"])
        if self.rebaser is not None and state.get("encoder"):
            self.rebaser.version, self.rebaser.rebases = state["encoder"]["version"], int(state["encoder"]["rebases"])
        self._reseed()

    def export_policy(self) -> ExportedPolicy:
        weights = self.bundle.weights()
        bad = [k for k, v in weights.items() if v.is_floating_point() and not bool(torch.isfinite(v).all())]
        if bad:  # cannot happen through step(); refuse rather than publish a broken model
            raise ValueError(f"refusing to export non-finite weights: {bad[:3]}")
        meta = self.metadata(self.total)
        return ExportedPolicy(weights=weights, files=dict(self._files),
                              metrics={"updates": float(self.updates), **{k: float(v) for k, v in meta["metrics"].items()
                                                                           if isinstance(v, (int, float)) and v == v}},
                              info={**meta["info"], "parent_version": self.setup_.parent_version,
                                    "data_range": meta["data_range"]})
