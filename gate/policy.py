"""One policy's side of the gate: what is live, its stages, its records, and what a stage may ask.

A stage sees its policy through these (its `self.policy`):

    kind, settings, seed, registry     the kind's adapter, the `gate` section, the registry
    live_version / live()              what is live: cached / read again from the registry (the CLI
                                       may move it)
    model(version), correct(version)   a stored version as a model; its held-out correctness (cached);
                                       both run models: call them under deciding()
    accuracy(version), scored()        its held-out accuracy; every version scored so far
    ever_live                          versions that went live and were not rolled back from
    adaptation, recent                 with `adapt`: the drift detectors, the recent slice
    deciding()                         the gate's one-decision-at-a-time lock
    rollback_target(), roll_back(...)  (under deciding) move live back, tell the publisher, record it
    pending_version(), end_pending(r)  (under deciding) the candidate on a live-traffic stage; end it
    emit(kind, **fields)               an event

Its records (`Records`): every decision (version, the live version it was judged against, held-out
accuracies for a kind with a held-out set, decision, reason, lineage parent, the learner's data so
far, seconds since the gate started), every rollback (from, to, reason, trigger: manual |
prequential | unservable) and the curve (live's held-out accuracy at each change).  After a gate
restart they start over; events.jsonl keeps them all.
"""

from __future__ import annotations

import logging
import threading
import time
from dataclasses import dataclass
from typing import Any, Callable

import numpy as np

from core.config.adapt import AdaptSection
from core.config.gate import GateSection
from core.storage.registry import LoadedPolicy
from gate.adaptation import FeedbackAdaptation
from gate.pointer import rollback_registry, rollback_target
from gate.recent import RecentSlice
from gate.stage import GUARD, Candidate, Stage, check_stages, stage_class

log = logging.getLogger(__name__)
MODELS_KEPT = 3  # stored versions kept loaded: live and rollback targets recur


@dataclass
class Pending:
    """A candidate a live-traffic stage holds: `index` is that stage's place in `gate.stages`."""

    stage: Stage
    candidate: Candidate
    index: int


class Policy:
    def __init__(self, policy_id: str, shared: Any, settings: GateSection, adapt: AdaptSection | None):
        self.policy_id, self.shared, self.settings = policy_id, shared, settings
        self.kind, self.registry, self.seed = shared.kind, shared.registry, shared.seed
        self.records = Records(shared.started)
        self.live_version: int | None = None
        self.ever_live: list[int] = []
        self.initial_accuracy: float | None = None
        self._correct: dict[int, np.ndarray] = {}  # held-out correctness per version
        self.adaptation = FeedbackAdaptation(adapt) if adapt is not None and adapt.enabled else None
        self.recent = (RecentSlice(adapt.recent_size, adapt.recent_min, self.kind.correct)
                       if self.adaptation is not None and self.kind.heldout is not None else None)
        chosen = check_stages(settings, self.kind.gives, self.kind.name)
        self.stages: dict[str, Stage] = {name: stage_class(name)(self, s) for name, s in chosen.items()}
        self.guard = stage_class(GUARD)(self, None)
        self.pending: Pending | None = None

    # ---- what is live --------------------------------------------------------------------
    def live(self) -> int | None:
        """The registry says what is live (the CLI may move it); a change is told to every stage."""
        live = (self.registry.stages(self.policy_id).get("live") or {}).get("version")
        if live != self.live_version:
            self.went_live(live)
        return live

    def went_live(self, version: int | None) -> None:
        with self.shared.mu:
            self.live_version = version
            if version is not None and version not in self.ever_live:
                self.ever_live.append(version)
        for stage in self.all_stages():
            stage.on_live(version)

    def all_stages(self) -> list[Stage]:
        return [*self.stages.values(), self.guard]

    def deciding(self) -> threading.Lock:
        return self.shared.eval

    # ---- stored versions -------------------------------------------------------------------
    def model(self, version: int, loaded: LoadedPolicy | None = None) -> Any:
        return self.shared.model(self.policy_id, version, loaded)

    def correct(self, version: int, loaded: LoadedPolicy | None = None) -> np.ndarray | None:
        """[N] held-out correctness of a stored version, scored once (None: the kind has no held-out set)."""
        if self.kind.heldout is None:
            return None
        with self.shared.mu:
            known = self._correct.get(version)
        if known is None:
            known = self.kind.correct(self.model(version, loaded), self.kind.heldout)
            self.keep_correct(version, known)
        return known

    def keep_correct(self, version: int, correct: np.ndarray | None) -> None:
        if correct is not None:
            with self.shared.mu:
                self._correct[version] = correct

    def accuracy(self, version: int, loaded: LoadedPolicy | None = None) -> float | None:
        correct = self.correct(version, loaded)
        return None if correct is None else float(correct.mean())

    def scored(self) -> dict[int, np.ndarray]:
        with self.shared.mu:
            return dict(self._correct)

    # ---- live moved back ---------------------------------------------------------------------
    def rollback_target(self) -> int | None:
        return rollback_target(self.registry, self.policy_id)

    def roll_back(self, to: int | None, reason: str, trigger: str) -> dict[str, Any]:
        """Move live back (to `to`, or the version before), tell the publisher, record it; under deciding."""
        done = rollback_registry(self.registry, self.policy_id, to=to, reason=reason)
        with self.shared.mu:  # a version rolled back from is nobody's benchmark
            self.ever_live = [v for v in self.ever_live if v != done["from"]]
        loaded = self.registry.load(self.policy_id, done["to"], as_numpy=True)
        self.shared.publisher.restore(self.policy_id, loaded.weights, done["to"], self.kind.spec)
        acc = self.accuracy(done["to"], loaded)
        self.went_live(done["to"])
        record = self.records.rollback(done, trigger, acc)
        self.emit("rollback", **record)
        return record

    # ---- the candidate on a live-traffic stage -----------------------------------------------
    def pending_version(self) -> int | None:
        return None if self.pending is None else self.pending.candidate.version

    def end_pending(self, reason: str) -> None:
        """End the live-traffic experiment in flight (refused with `reason`); under deciding."""
        from gate.decide import settle

        pending = self.pending
        if pending is not None:
            verdict = pending.stage.end(reason)
            if verdict is not None:
                settle(self, pending, verdict)

    def emit(self, kind: str, **fields: Any) -> None:
        self.shared.emit(kind, **fields)


LIVE_DECISIONS = ("promote", "initial")


class Records:
    def __init__(self, started: float):
        self.started = started
        self.decisions: list[dict[str, Any]] = []
        self.rollbacks: list[dict[str, Any]] = []
        self.curve: list[dict[str, Any]] = []
        self.dropped = 0
        self.aborted = 0  # candidates a live-traffic stage refused
        self.ticket = 0  # the newest candidate handed in
        self.events: int | None = None  # the newest `data_range.events` a learner reported
        self.evidence: dict[str, int] = {}  # evidence items taken, by type
        self._lock = threading.Lock()

    def decision(self, version: int | None, parent: int | None, decision: str, reason: str, acc: float | None,
                 parent_acc: float | None, lineage_parent: int | None) -> dict[str, Any]:
        """`parent` is the live version the candidate was judged against (and replaces when promoted);
        `lineage_parent` what the registry records (the learner's starting version when it says so)."""
        record = {"version": version, "parent": parent, "heldout_accuracy": acc, "parent_heldout_accuracy": parent_acc,
                  "decision": decision, "reason": reason, "lineage_parent": lineage_parent, "events": self.events,
                  "time": time.time() - self.started}
        with self._lock:
            self.decisions.append(record)
            if decision in LIVE_DECISIONS:
                self._point(version, acc, decision)
        return record

    def rollback(self, done: dict[str, Any], trigger: str, acc: float | None) -> dict[str, Any]:
        record = {**done, "trigger": trigger, "heldout_accuracy": acc, "events": self.events,
                  "time": time.time() - self.started}
        with self._lock:
            self.rollbacks.append(record)
            self._point(done["to"], acc, "rollback")
        return record

    def point(self, version: int, acc: float | None, cause: str) -> None:
        with self._lock:
            self._point(version, acc, cause)

    def _point(self, version: int | None, acc: float | None, cause: str) -> None:
        self.curve.append({"version": version, "heldout_accuracy": acc, "events": self.events, "cause": cause,
                           "time": time.time() - self.started})

    def count(self, what: str, n: int = 1) -> None:
        with self._lock:
            if what in ("dropped", "aborted"):
                setattr(self, what, getattr(self, what) + n)
            else:
                self.evidence[what] = self.evidence.get(what, 0) + n

    def summary(self) -> dict[str, Any]:
        with self._lock:
            last = max([*self.decisions[-1:], *({"decision": "rollback", **r} for r in self.rollbacks[-1:])],
                       key=lambda r: r["time"], default=None)
            return {
                "promotions": [dict(d) for d in self.decisions],
                "promoted": sum(d["decision"] in LIVE_DECISIONS for d in self.decisions),
                "refused": sum(d["decision"] == "refuse" for d in self.decisions),
                "dropped": self.dropped,
                "aborted": self.aborted,
                "rollbacks": [dict(r) for r in self.rollbacks],
                "curve": [dict(c) for c in self.curve],
                "last_decision": dict(last) if last is not None else None,
                "evidence": dict(self.evidence),
            }


def plain_emit(sink: Callable[..., None] | None) -> Callable[..., None]:
    """`emit(kind, **fields)` that never takes a decision down with a broken event sink."""

    def emit(kind: str, **fields: Any) -> None:
        if sink is None:
            return
        try:
            sink(kind, **fields)
        except Exception:
            log.exception("gate: emitting %s failed", kind)

    return emit

