"""A feedback loop that re-bases its classifier onto the encoders an MLM loop of the same run publishes.

    prepare   the classifier names `model.encoder_loop`; with an encoder of its own (pretrained_dir,
              or one at encoder_registry) it keeps that start and the MLM loop stands down
    start     with none: version 1 is a random init on the MLM loop's tokenizer and shape, and the
              learner gets the feed of that loop's encoders (learners/rebase.py)
    poll      the learner says which encoder it is on: a change is said once and written as an event
    summary   every encoder version the classifier re-based onto, with the gate's decision on each
              candidate built on it
"""

from __future__ import annotations

import json
from typing import Any

from core.models.classifier_start import own_encoder
from core.storage.registry import PolicyNotFound, PolicyRegistry
from gate.policy import LIVE_DECISIONS
from learners.rebase import EncoderFeed


class EncoderFollow:
    def __init__(self, loop: Any):
        self.loop = loop  # the FeedbackLoop: its name, fb section, context and events
        self.source: str | None = None  # the MLM loop re-based onto; None: no re-basing
        self.encoder_version: int | None = None  # the learner's, as it last reported
        self.rebased: list[dict[str, Any]] = []

    def decide(self) -> None:
        loop = self.loop
        name = loop.fb.model.encoder_loop
        if name is None:
            return
        own = own_encoder(loop.fb)
        if own is not None:
            loop.ctx.say(f"evolve: {loop.name}: starts from {own} (it takes precedence): "
                         f"no re-basing onto loop {name!r}")
            return
        self.source = name

    @property
    def mlm(self) -> Any:
        return self.loop.ctx.loops[self.source]

    def encoder_files(self) -> dict[str, bytes] | None:
        """The tokenizer and shape of the encoders to come (the starting classifier's)."""
        if self.source is None:
            return None
        data = self.mlm.data
        return {**data.tokenizer_files(), "config.json": json.dumps(data.model_config.to_dict(), default=str).encode()}

    def feed(self, live_info: dict[str, Any] | None = None) -> EncoderFeed | None:
        """The learner's feed; a resumed classifier continues from the encoder its live version is on."""
        if self.source is None:
            return None
        version = (live_info or {}).get("encoder_version")
        self.encoder_version = version
        return EncoderFeed(self.loop.ctx.registry.uri, self.mlm.mlm.policy_id, version=version,
                           poll_every=self.loop.fb.learning.candidate_every)

    def follow(self, learner_figures: dict[str, Any]) -> dict[str, Any]:
        """The progress line's `encoder` figure; a new encoder under the learner is said once."""
        if self.source is None:
            return {}
        seen = learner_figures.get("encoder_version")  # a mean over the report's steps: whole once settled
        version = int(seen) if seen and seen == int(seen) else None
        if version is not None and version != self.encoder_version:
            self.encoder_version = version
            facts = self._encoder_facts(version)
            at = {"version": version, "updates": int(learner_figures.get("step", 0)), **facts}
            self.rebased.append(at)
            self.loop.event("rebased", encoder_policy=self.mlm.mlm.policy_id, **at)
            acc = facts.get("masked_accuracy")
            self.loop.ctx.say(f"evolve: {self.loop.name}: the learner re-based onto encoder v{version}"
                              + (f" (masked accuracy {acc:.3f})" if acc is not None else "")
                              + "; its candidates go through the gate")
        return {"encoder": self.encoder_version} if self.encoder_version else {}

    def _encoder_facts(self, version: int) -> dict[str, Any]:
        try:
            meta = self.loop.ctx.registry.get(self.mlm.mlm.policy_id, version)
        except PolicyNotFound:
            return {}
        return {"masked_accuracy": meta.metrics.get("masked_accuracy")}

    def summary(self, decisions: list[dict[str, Any]]) -> dict[str, Any]:
        if self.source is None:
            return {}
        registry, policy_id = self.loop.ctx.registry, self.loop.fb.policy_id
        return {"encoder_loop": self.source,
                "encoders": encoder_decisions(registry, policy_id, decisions, self.rebased)}


def encoder_decisions(registry: PolicyRegistry, policy_id: str, decisions: list[dict[str, Any]],
                      rebased: list[dict[str, Any]]) -> list[dict[str, Any]]:
    """Per encoder version the classifier was on (0: its random start): when it re-based, and the
    gate's decision on each candidate built on it."""
    by_encoder: dict[int, dict[str, Any]] = {0: {"encoder_version": 0, "decisions": []}}
    for at in rebased:
        by_encoder[at["version"]] = {"encoder_version": at["version"], "rebased_at_update": at["updates"],
                                     "masked_accuracy": at.get("masked_accuracy"), "decisions": []}
    for d in decisions:
        if d.get("version") is None:
            continue
        try:
            info = registry.get(policy_id, d["version"]).info
        except PolicyNotFound:
            continue
        entry = by_encoder.setdefault(int(info.get("encoder_version") or 0),
                                      {"encoder_version": int(info.get("encoder_version") or 0), "decisions": []})
        entry["decisions"].append({"version": d["version"], "decision": d.get("decision"),
                                   "heldout_accuracy": d.get("heldout_accuracy")})
    out = []
    for entry in sorted(by_encoder.values(), key=lambda e: e["encoder_version"]):
        made = [x["decision"] for x in entry["decisions"]]
        promoted = [x for x in entry["decisions"] if x["decision"] in LIVE_DECISIONS]
        out.append({**entry, "promoted": len(promoted), "refused": made.count("refuse"),
                    "best_promoted_accuracy": max((x["heldout_accuracy"] for x in promoted
                                                   if x["heldout_accuracy"] is not None), default=None)})
    return out
