"""The MLM loop: masked-LM pretraining on Ray Train, then the encoder + tokenizer published to the registry.

    prepare: corpus, tokenizer, model checked (before Ray starts)
    start:   Ray Data blocks -> TorchTrainer(MLMObjective) in the background
    poll:    progress and held-out evaluations; at `budget - finish_reserve_s` it asks the
             workers to stop, so the last evaluation, checkpoint and publish fit in the budget
    stop:    the final checkpoint's policy -> PolicyRegistry (safetensors + tokenizer + lineage)

Running it again with the same run directory resumes from the last checkpoint
(<run dir>/train/<name>) with the same tokenizer; the published version's
parent is then the one the earlier run published.

Another pretraining kind (`cluster/loops/clm.py`) is this loop with its own data, objective,
figures and published metrics: the hooks `prepare_data`, `objective`, `eval_figures`,
`published_line` and `summary_figures`, and the class attributes below.
"""

from __future__ import annotations

import time
from pathlib import Path
from typing import Any

import ray

from cluster.errors import UserError
from cluster.loop import LoopBase, RunContext, round_or_none
from core.config.evolve import EvolveConfig
from core.models.classifier_start import own_encoder
from core.data.mlm import MLMData, prepare_mlm_data
from core.storage.registry import RegistryError
from learners.encoder_publish import InterimPublish
from learners.mlm import MLMObjective, MLMSetup
from learners.text_source import RayDataSource, ReplayTextSource
from learners.train_loop import POLICY_DIR, LoopSpec, read_policy

class MLMLoop(LoopBase):
    CURVE_KEYS = ("step", "tokens", "train_s", "masked_accuracy", "perplexity", "eval_loss")
    METRICS = ("masked_accuracy", "perplexity", "eval_loss")  # of the last evaluation, into the registry
    INFO = {"objective": "mlm", "kind": "bert-encoder"}  # what the published version is, in its lineage

    def __init__(self, cfg: EvolveConfig, ctx: RunContext, name: str):
        super().__init__(cfg, ctx, name)
        self.mlm = cfg.loops[name]
        self.curve: list[dict[str, Any]] = []
        self.tokens = self.train_s = 0.0
        self.step = 0
        self.checkpoint_step: int | None = None
        self.stopped_by: str | None = None
        self.published_version: int | None = None
        self.uses_replay = self.mlm.source == "replay"  # continual MLM on request texts; else the corpus
        # the classifiers of the run that may re-base onto this loop's encoders (their model.encoder_loop)
        self.feeds = [n for n, loop in cfg.loops_of("feedback").items() if loop.model.encoder_loop == name]
        self.stood_down: str | None = None
        self.interim: list[int] = []  # encoder versions published while training

    def prepare(self) -> None:
        if self.feeds and not self._following():
            self.stood_down = f"every classifier it pretrains for ({', '.join(self.feeds)}) has an encoder of its own"
            self.ctx.say(f"evolve: {self.name}: stands down: {self.stood_down}")
            return
        if not self.cfg.learner.use_gpu and self.mlm.model.preset == "gpu-base":
            self.ctx.say("evolve: warning: the gpu-base preset on CPU learners will be slow")
        try:
            self.data: MLMData = self.prepare_data(self.ctx.run_dir.path / "tokenizer")
        except ValueError as exc:  # CorpusError, TokenizerError, ModelError: the user's input
            raise UserError(str(exc)) from None
        facts = self.data.facts
        self.ctx.say(f"evolve: corpus {facts['train_texts']} train / {facts['heldout_texts']} held-out texts, "
                     f"{facts['train_tokens']:,} tokens, vocab {facts['vocab_size']} ({facts['tokenizer']})")
        self.event("data", **facts)

    def prepare_data(self, tokenizer_dir: Path) -> MLMData:
        return prepare_mlm_data(self.mlm, tokenizer_dir=tokenizer_dir)

    def objective(self) -> tuple[Any, Any]:
        """(the objective's class, the setup every worker builds it from)."""
        mlm, data = self.mlm, self.data
        return MLMObjective, MLMSetup(
            mlm=mlm, model_config=data.model_config.to_dict(),
            pretrained_dir=str(mlm.model.pretrained_dir) if mlm.model.pretrained_dir else None,
            tokenizer_files=data.tokenizer_files(), special_ids=data.special_ids,
            heldout=data.heldout_blocks, info=data.facts, interim=self._interim())

    def _interim(self) -> InterimPublish | None:
        """Publish while training when a classifier of the run re-bases onto this loop."""
        if not self.feeds:
            return None
        facts = {k: v for k, v in self.data.facts.items() if k != "corpus_path"}
        return InterimPublish(str(self.ctx.registry.uri), self.mlm.policy_id, self.mlm.publish_min_gain,
                              info={**facts, "run": self.cfg.run.name, "loop": self.name})

    def _following(self) -> list[str]:
        """The classifiers that do re-base onto this loop (one with an encoder of its own keeps it)."""
        return [n for n in self.feeds if own_encoder(self.cfg.loops[n]) is None]

    # ---- start -------------------------------------------------------------------------
    def launch(self) -> None:
        if self.stood_down:
            self.event("stood_down", reason=self.stood_down)
            return
        mlm, data = self.mlm, self.data
        budget = self.cfg.run.budget_s
        self.deadline = None if budget is None else self.ctx.started + budget - mlm.finish_reserve_s
        ray.data.DataContext.get_current().enable_progress_bars = False  # the run's progress line is the display
        objective, setup = self.objective()
        if self.uses_replay:
            source = ReplayTextSource(self.ctx.replay, mlm.replay_table, mlm.batch_size, mlm.seq_len,
                                      data.tokenizer_files(), bounds=data.bounds)
            datasets = None
        else:
            source = RayDataSource("train", batch_size=mlm.batch_size)
            blocks = [data.train_blocks[i : i + 1024] for i in range(0, len(data.train_blocks), 1024)]
            datasets = {"train": ray.data.from_numpy(blocks)}
        spec = LoopSpec(objective_factory=objective, objective_config=setup, source=source,
                        max_steps=mlm.max_steps, report_every=mlm.report_every, eval_every=mlm.eval_every,
                        checkpoint_every=mlm.checkpoint_every, threads=self._threads(), seed=mlm.seed)
        self.launch_learner(spec, datasets=datasets)
        self.ctx.say(f"evolve: {self.name}: {self.cfg.learner.num_workers} worker(s) x {spec.threads} thread(s), "
                     f"{mlm.batch_size} x {mlm.seq_len} tokens per worker step")

    def _threads(self) -> int:
        """Torch threads per worker: as configured, else the worker's share of an embedded machine
        (a worker reserves learner.cpus_per_worker in Ray, 1 leaves room for Ray Data on a 2-core
        laptop, but may compute with every core its siblings do not use)."""
        if self.mlm.threads_per_worker is not None:
            return self.mlm.threads_per_worker
        learner = self.cfg.learner
        own = max(1, int(learner.cpus_per_worker))
        if not self.ctx.cluster.embedded:
            return own
        return max(own, int(ray.cluster_resources().get("CPU", own)) // learner.num_workers)

    # ---- poll --------------------------------------------------------------------------
    def poll(self) -> dict[str, Any]:
        if self.stood_down:
            return super().poll()
        if self.deadline is not None and time.time() >= self.deadline and self.stopped_by is None:
            self.stopped_by = "budget"
            self.learner.request_stop()
        return super().poll()

    def on_learner(self, records: list[dict[str, Any]]) -> None:
        for rec in records:
            kind = rec["kind"]
            if kind == "progress":
                self.tokens, self.train_s, self.step = rec["total_tokens"], rec["train_s"], rec["step"]
            elif kind == "eval":
                self.curve.append(rec)
                if rec.get("published_version") is not None:
                    self._said_interim(rec)
                self.tokens, self.step = max(self.tokens, rec["tokens"]), max(self.step, rec["step"])
                self.train_s = max(self.train_s, rec["train_s"])
            elif kind == "checkpoint":
                self.checkpoint_step = rec["step"]
            elif kind == "resumed":
                self.ctx.say(f"evolve: {self.name}: resumed from the checkpoint at step {rec['step']}")

    def _said_interim(self, rec: dict[str, Any]) -> None:
        version = int(rec["published_version"])
        self.interim.append(version)
        self.event("published", policy_id=self.mlm.policy_id, version=version, interim=True, step=rec.get("step"),
                   masked_accuracy=rec.get("masked_accuracy"))
        self.ctx.say(f"evolve: {self.name}: published {self.mlm.policy_id} v{version} at step {rec.get('step')} "
                     f"(masked accuracy {rec.get('masked_accuracy', float('nan')):.3f}) for {', '.join(self._following())}")

    def figures(self) -> dict[str, Any]:
        if self.stood_down:
            return {"stood_down": True}
        last = self.learner.figures if self.learner is not None else {}
        return {
            "step": self.step,
            "tok/s": round(last.get("tokens_per_s", 0)),
            "loss": round_or_none(last.get("loss"), 3),
            **self.eval_figures(self.curve[-1] if self.curve else {}),
            **({"ckpt": self.checkpoint_step} if self.checkpoint_step is not None else {}),
        }

    def eval_figures(self, last_eval: dict[str, Any]) -> dict[str, Any]:
        """The progress line's figures of the newest held-out evaluation ({} before the first)."""
        return {"heldout_acc": round_or_none(last_eval.get("masked_accuracy"), 3)}

    def done(self) -> bool:
        # a pretraining loop has nothing to serve: a learner failed for good ends it
        if self.stood_down:
            return True
        return self.learner is not None and (self.learner.finished() or self.learner.failed is not None)

    # ---- stop and summary ----------------------------------------------------------------
    def stop(self) -> None:
        if self.stopped_by is None:  # before stop() ends the learner: did it reach max_steps itself?
            self.stopped_by = ("learner_failed" if self.degraded else "max_steps") if self.done() else "run_stopped"
        super().stop()

    def finish(self) -> None:
        if self.learner is None or self.learner.result is None:
            return  # the learner failed: nothing to publish
        self.published_version = self._publish(self.learner.result)
        if self.published_version is not None:
            self.ctx.say(f"evolve: published {self.mlm.policy_id} v{self.published_version} "
                         f"({self.published_line(self.summary())})")

    def published_line(self, summary: dict[str, Any]) -> str:
        return f"masked accuracy {summary['masked_accuracy']:.3f}, perplexity {summary['perplexity']:.1f}"

    def _publish(self, result) -> int | None:
        if result.checkpoint is None:
            return None
        with result.checkpoint.as_directory() as ckpt:
            if not (Path(ckpt) / POLICY_DIR).is_dir():
                return None
            weights, files, meta = read_policy(Path(ckpt) / POLICY_DIR)
        registry, policy_id, facts = self.ctx.registry, self.mlm.policy_id, self.data.facts
        latest = registry.latest(policy_id)
        resumed = self.learner.resumed_from
        # A resumed run continues the model the previous run published, a run that published while
        # training its own last encoder: that version is the parent.
        parent = latest.version if (latest is not None and (resumed is not None or self.interim)) else None
        metadata = {
            "parent_version": parent,
            "metrics": {k: v for k, v in {**facts, **meta["metrics"]}.items() if k in self.METRICS},
            "data_range": {"corpus": facts["corpus_path"], "texts": facts["train_texts"],
                           "tokens_seen": self.tokens, "steps": [resumed or 0, meta["step"]]},
            "info": {**self.INFO, "run_dir": str(self.ctx.run_dir.path),
                     "run": self.cfg.run.name, "ray_version": ray.__version__,
                     **{k: v for k, v in facts.items() if k != "corpus_path"}},
        }
        try:
            version = registry.publish(policy_id, weights, metadata, files=files)
        except RegistryError as exc:
            raise UserError(f"cannot publish {policy_id}: {exc}") from None
        self.event("published", policy_id=policy_id, version=version, parent_version=parent)
        return version

    def summary(self) -> dict[str, Any]:
        """The curve of a resumed run includes the earlier runs' points."""
        if self.stood_down:
            return {"stood_down": self.stood_down}
        full = self._full_curve()
        first, last = (full[0], full[-1]) if full else ({}, {})
        return {
            **self.summary_figures(first, last),
            "tokens": last.get("tokens", self.tokens),
            "tokens_per_s": (self.tokens / self.train_s) if self.train_s > 0 else None,
            "steps": max(self.step, last.get("step", 0)),
            "train_s": round(self.train_s, 3),
            "stopped_by": self.stopped_by,
            "resumed_from_step": self.learner.resumed_from if self.learner else None,
            "published_version": self.published_version,
            **({"published_while_training": self.interim} if self.feeds else {}),
            "curve": [{k: p[k] for k in self.CURVE_KEYS if k in p} for p in full],
        }

    def summary_figures(self, first: dict[str, Any], last: dict[str, Any]) -> dict[str, Any]:
        """The first and the last held-out evaluation's figures, as summary.json shows them."""
        return {"initial_masked_accuracy": first.get("masked_accuracy"), "masked_accuracy": last.get("masked_accuracy"),
                "perplexity": last.get("perplexity"), "eval_loss": last.get("eval_loss")}

    def _full_curve(self) -> list[dict[str, Any]]:
        # The workers' curve lives in the checkpoint; after a resume this run only saw its own
        # points, so earlier points come from this run directory's event log.
        from cluster.rundir import read_events

        points = {e["step"]: e for e in read_events(self.ctx.run_dir.events_path)
                  if e.get("loop") == self.name and e.get("event") == "learner_eval"}
        points.update({p["step"]: p for p in self.curve})
        return [points[s] for s in sorted(points)]
