"""What the gate remembers of one policy's decisions: every decision, rollback and point of the curve.

    decision  version, the live version it was judged against (`parent`), held-out accuracies
              (kinds with a held-out set), decision, reason, the registry's lineage parent, the
              learner's data so far (`events`), seconds since the gate started
    rollback  from, to, reason, trigger (manual | prequential | unservable), the held-out accuracy
              of the version made live again
    curve     the live version's held-out accuracy each time live changed, with its cause

After a gate restart the lists start over; events.jsonl keeps them all.
"""

from __future__ import annotations

import threading
import time
from typing import Any

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
