"""A novelty loop: an autoencoder learns what the requests of the feedback loop it watches look like.

    that loop's text table (request texts) --sample, paced--> TorchTrainer(AutoencoderObjective)
        -> every publish_every steps: calibrated version -> registry `<policy_id>-novelty` (live)
        -> each feedback replica follows it: every prediction answers `novelty` (0..100 percentile)
           and the joiner hands the gate's drift detector the novelty stream

It reads the served classifier's first version as its fixed reference
encoder, so the feedback loop (listed before it) has published that version
by the time this loop starts.
"""

from __future__ import annotations

from typing import Any

from cluster.errors import UserError
from cluster.loop import LoopBase, RunContext, round_or_none
from core.config.evolve import EvolveConfig
from core.config.novelty import novelty_policy_id
from learners.autoencoder import AutoencoderObjective, AutoencoderSetup
from learners.text_source import ReplayTextBatches
from learners.train_loop import LoopSpec


class NoveltyLoop(LoopBase):
    def __init__(self, cfg: EvolveConfig, ctx: RunContext, name: str):
        super().__init__(cfg, ctx, name)
        self.nv = cfg.loops[name]
        watched = cfg.loops[self.nv.watch]
        self.policy_id, self.table = watched.policy_id, watched.tables["text"]  # what it watches, what it reads
        self.reference: dict[str, Any] = {}
        self.versions: list[dict[str, Any]] = []  # each published autoencoder with its calibration

    def launch(self) -> None:
        nv, registry = self.nv, self.ctx.registry
        versions = registry.versions(self.policy_id)
        if not versions:
            raise UserError(f"{self.name}: no version of {self.policy_id!r} to read features with "
                            f"(list the feedback loop {nv.watch!r} before {self.name!r} in loops)")
        first = registry.load(self.policy_id, versions[0], as_numpy=True)
        self.reference = {"policy_id": self.policy_id, "version": first.meta.version}
        setup = AutoencoderSetup(cfg=nv, registry_uri=registry.uri, reference=self.reference,
                                 weights=dict(first.weights), files=dict(first.files))
        placement = self.cfg.learner.model_copy(update={"num_workers": 1, "cpus_per_worker": nv.cpus_per_worker})
        self.launch_learner(LoopSpec(
            objective_factory=AutoencoderObjective,
            objective_config=setup,
            source=ReplayTextBatches(self.ctx.replay, self.table, nv.batch_size, nv.max_steps_per_s),
            report_every=10,
            eval_every=nv.publish_every,
            checkpoint_every=nv.checkpoint_every,
            threads=1,
            seed=nv.seed,
        ), placement=placement)

    def on_learner(self, records: list[dict[str, Any]]) -> None:
        for rec in records:
            if rec["kind"] == "eval" and "novelty_version" in rec:
                self.versions.append({"version": int(rec["novelty_version"]), "step": rec["step"],
                                      "calibration_p50": rec["calibration_p50"],
                                      "calibration_p95": rec["calibration_p95"]})
                self.event("published", policy_id=novelty_policy_id(self.policy_id), **self.versions[-1])

    def figures(self) -> dict[str, Any]:
        last = self.versions[-1] if self.versions else {}
        return {"version": last.get("version"), "updates": self.learner_figures()["updates"],
                "loss": round_or_none(self.learner_figures()["loss"], 4)}

    def summary(self) -> dict[str, Any]:
        return {
            "policy_id": novelty_policy_id(self.policy_id),
            "reference": self.reference,
            "versions_published": len(self.versions),
            "live_version": self.versions[-1]["version"] if self.versions else None,
            "updates": self.learner_figures()["updates"],
            "curve": self.versions,
        }
