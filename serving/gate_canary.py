"""The publish gate's last stage: a canary on live traffic, decided by an always-valid sequential test.

    candidate passed the earlier stages -> stored, registry stage `canary` points at it
        replicas (serving/canary.py) answer `gate.canary.fraction` of predict requests with it,
        sticky per client key; its answers are joined with their feedback like live's
    each joined feedback -> observe(): the reward goes to the candidate's arm or live's
        (core/stats/sequential.py) and the test is read at once:
            abort    significantly worse than live: stage cleared, the version stays stored, refused
            promote  not worse (with evidence, or at the exposure cap): it goes live on every replica
    while a canary runs, newer candidates are dropped: one experiment on the traffic at a time

`PublishGate` inherits this; it uses the gate's state, locks, registry and publisher.
"""

from __future__ import annotations

import time
from dataclasses import dataclass, field
from typing import Any, Sequence

from core.stats.sequential import CanaryTest
from serving.rollback import promote_over

STAGE = "canary"


@dataclass
class Canary:
    version: int
    live: int
    test: CanaryTest
    weights: dict = field(repr=False)
    meta: dict = field(repr=False)
    started: float = field(default_factory=time.time)
    heldout_accuracy: float | None = None
    live_accuracy: float | None = None


class CanaryGate:
    def _start_canary(self, policy_id: str, st: Any, live: int, weights: dict, files: dict, meta: dict,
                      acc: float, live_acc: float) -> int:
        """Store the candidate and point the `canary` stage at it; call under _eval."""
        meta["gate"] = self._canary_gate(meta["gate"])
        version = self.registry.publish(policy_id, weights, meta, files=files)
        self._run_canary(policy_id, st, version, live, weights, meta, acc, live_acc)
        return version

    def _canary_gate(self, gate: dict) -> dict:
        return {**gate, "decision": "canary",
                "reason": f"{gate.get('reason')}; canary on {self.config.canary.fraction:.0%} of traffic"}

    def _run_canary(self, policy_id: str, st: Any, version: int, live: int, weights: dict, meta: dict,
                    acc: float, live_acc: float) -> None:
        """Point the `canary` stage at a stored version (its metadata says `canary`); call under _eval."""
        c = self.config.canary
        test = CanaryTest(tolerance=self.config.tolerance, alpha=c.alpha, max_requests=c.max_requests,
                          min_requests=c.min_requests, n_opt=c.n_opt)
        with self._mu:
            st.canary = Canary(version, live, test, weights, meta, heldout_accuracy=acc, live_accuracy=live_acc)
        self.registry.promote(policy_id, version, stage=STAGE)
        self._emit("canary_started", policy_id=policy_id, version=version, live=live, fraction=c.fraction)

    def _canary_busy(self, policy_id: str, st: Any) -> dict | None:
        canary = st.canary
        if canary is None:
            return None
        reason = f"a canary (v{canary.version}) is on live traffic; one experiment at a time"
        with self._mu:
            st.dropped += 1
        self._emit("gate_dropped", policy_id=policy_id, reason=reason)
        return {"policy_id": policy_id, "decision": "dropped", "version": None, "reason": reason}

    def _canary_feed(self, policy_id: str, pairs: Sequence[tuple[int, float]]) -> None:
        """Joined feedback (version that answered, reward): the canary's arms; decides when it can."""
        with self._mu:
            st = self._state(policy_id)
            canary = st.canary
            if canary is None:
                return
            for version, reward in pairs:
                if version == canary.version:
                    canary.test.add("candidate", reward)
                elif version == canary.live:
                    canary.test.add("live", reward)
            decision, reason = canary.test.decision()
        if decision != "continue":
            with self._eval:
                if st.canary is canary:
                    self._finish_canary(policy_id, st, canary, decision, reason)

    def _finish_canary(self, policy_id: str, st: Any, canary: Canary, decision: str, reason: str) -> None:
        evidence = {"stage": STAGE, "decision": "promote" if decision == "promote" else "refuse",
                    "reason": reason, "duration_s": round(time.time() - canary.started, 1), **canary.test.evidence()}
        gate = dict(canary.meta.get("gate") or {})
        gate.update(decision=evidence["decision"], reason=reason, stages=[*gate.get("stages", []), evidence])
        self.registry.update_metadata(policy_id, canary.version, gate=gate)
        self.registry.clear(policy_id, STAGE)
        with self._mu:
            st.canary = None
        live_now = self._refresh_live(policy_id, st)
        if evidence["decision"] == "promote" and live_now == canary.live \
                and promote_over(self.registry, policy_id, canary.version, canary.live):
            self.publisher.restore(policy_id, canary.weights, canary.version, self.spec)
            self._went_live(st, canary.version)
        elif evidence["decision"] == "promote":  # live moved meanwhile (a rollback, the CLI): judged against another
            live_now = self._refresh_live(policy_id, st)
            reason = f"{reason}; but live changed to v{live_now} meanwhile"
            evidence.update(decision="refuse", reason=reason)
            gate.update(decision="refuse", reason=reason)
            self.registry.update_metadata(policy_id, canary.version, gate=gate)
        self._emit("canary_ended", policy_id=policy_id, version=canary.version, **evidence)
        self._record(policy_id, st, canary.version, canary.live, evidence["decision"], reason,
                     canary.heldout_accuracy, canary.live_accuracy, lineage_parent=canary.meta.get("parent_version"),
                     gate=gate)

    def canary(self, policy_id: str) -> dict | None:
        """The canary in flight: version, live, evidence so far (None: none)."""
        with self._mu:
            canary = self._state(policy_id).canary
            if canary is None:
                return None
            return {"version": canary.version, "live": canary.live, "started": canary.started,
                    **canary.test.evidence()}
