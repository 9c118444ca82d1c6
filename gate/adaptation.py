"""The gate's adaptive side: drift detectors on the live version's prequential correctness, on the
requests' novelty and on the predicted-label mix, and the controller's decisions, with the state
the learner and the rollback guard read.

    evidence: scores of live's answers --> FeedbackAdaptation --alarm--> Controller
              answered requests (novelty, label) -->
                                                    |  decisions (ids)
                                                    v
        learner: latest() every few updates   rollback guard: open_alarm() names the alarm beside a
        (applies a new learner_boost once)    `world_changed` it reports (gate/stages/rollback.py)

Plain logic (tests drive it without Ray); the gate keeps one per policy with `adapt.enabled`.
"""

from __future__ import annotations

from typing import Any, Iterable

from core.config.adapt import AdaptSection
from core.adapt.controller import Controller
from core.adapt.detectors import Alarm, Detector


class FeedbackAdaptation:
    def __init__(self, cfg: AdaptSection):
        self.cfg = cfg
        self.detector = Detector("correctness", cfg.correctness, direction="down")
        self.novelty = Detector("novelty", cfg.novelty, direction="up")
        self.label_mix = Detector("label_mix", cfg.label_mix, direction="both")
        self.mix_version: int | None = None  # the version the label-mix detector watches
        self.controller = Controller(cfg)
        self.version: int | None = None  # the live version the detector has been watching
        self.events = 0
        self.decisions: list[dict[str, Any]] = []

    def observe(self, live: int | None, pairs: Iterable[tuple[int, float]], events: int) -> list[dict[str, Any]]:
        """Feed the live version's values ((predicting version, 1/0 or reward) pairs; others are
        ignored); returns the decisions this made, each once."""
        self.events = max(self.events, int(events))
        new = []
        for version, value in pairs:
            if version != live:
                continue
            new += self._decide(self.detector.update(value), live)
        return new

    def observe_inputs(self, live: int | None, inputs: Iterable[tuple[int, float | None, int]]) -> list[dict[str, Any]]:
        """Feed what the replicas answered: (version, novelty 0..100 or None, predicted label id)."""
        new = []
        for version, novelty, label in inputs:
            if novelty is not None:
                new += self._decide(self.novelty.update(float(novelty) / 100.0), live)
            if version != live:
                continue
            if version != self.mix_version:  # each version's own mix: restart the detector
                self.label_mix = Detector("label_mix", self.cfg.label_mix, direction="both")
                self.mix_version = version
            new += self._decide(self.label_mix.update(1.0 if int(label) == 0 else 0.0), live)
        return new

    def on_verdict(self, decision: str, live: int | None) -> list[dict[str, Any]]:
        """A gate decision on a candidate: a refusal streak during a drift may raise the learner's memory."""
        answer = self.controller.on_verdict(decision, self.events)
        return [] if answer is None else [self._record(answer, live)]

    def _decide(self, alarm: Alarm | None, live: int | None) -> list[dict[str, Any]]:
        if alarm is None:
            return []
        return [self._record(self.controller.on_alarm(alarm, self.events), live)]

    def _record(self, decision: Any, live: int | None) -> dict[str, Any]:
        record = {"id": len(self.decisions) + 1, "events": self.events, "version": live, **decision.to_dict()}
        self.decisions.append(record)
        return record

    def latest(self) -> dict[str, Any] | None:
        """The newest decision that acted (the learner applies each id once), with the memory level now."""
        acted = [d for d in self.decisions if d["actions"]]
        return {**acted[-1], "memory_level": self.controller.memory_level} if acted else None

    def open_alarm(self) -> dict[str, Any] | None:
        """The drift alarm that acted less than a cooldown ago (None: none): the detectors saw the
        data change.  Context only: the rollback guard decides on a paired test either way.  A
        refusal streak's decision is not an alarm on the data."""
        acted = [d for d in self.decisions if d["actions"] and d["signal"] != "refusals"]
        last = acted[-1] if acted else None
        if last is None or self.events - last["events"] >= max(self.cfg.cooldown_events, 1):
            return None
        return last
