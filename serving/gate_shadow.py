"""The publish gate's shadow stage: the candidate also answers a share of live requests, judged on their feedback.

    candidate passed the synchronous stages -> stored, registry stage `shadow` points at it
        replicas (serving/canary.py, stage `shadow`) classify `gate.shadow.fraction` of predict
        requests with it too, greedily; the client gets live's answer, the event both
    joined feedback of such events -> shadow_rows(): kept while they name this shadow and its live
    `min_rows` of them -> core.stats.ope.compare on the same rows:
            target       one-hot of the shadow's answers      live target  one-hot of live's argmax
            logged       the served answer, its propensity, the label or the reward
            reward model live's class probabilities (the doubly robust estimate's q)
        refuse   the interval on candidate - live, or the observed difference, below -tolerance
                 (serving/ope_slice.py `decide`): stage cleared, the version stays stored
        promote  on to `canary` when it is a stage, else live on every replica
    no `min_rows` within `max_s`: refused for lack of evidence (checked as feedback arrives and when
    the next candidate comes), so a quiet endpoint never holds the gate
    while a shadow runs, newer candidates are dropped: one experiment on the traffic at a time

Live's answers are what the clients saw, so the labels and rewards judge live directly; the
candidate's are counterfactual: a labeled row tells its reward exactly, a reward-only row only
where it agrees with the served answer (reweighted by the propensity).

`PublishGate` inherits this; it uses the gate's state, locks, registry and publisher.
"""

from __future__ import annotations

import time
from dataclasses import dataclass, field
from typing import Any, Mapping, Sequence

import numpy as np

from core.stats.ope import Logged, compare
from serving.ope_slice import OPEVerdict, decide, greedy
from serving.rollback import promote_over

STAGE = "shadow"


@dataclass
class Shadow:
    version: int
    live: int
    weights: dict = field(repr=False)
    meta: dict = field(repr=False)
    started: float = field(default_factory=time.time)
    heldout_accuracy: float | None = None
    live_accuracy: float | None = None
    # (served action, propensity, reward, label or -1, shadow's answer, live's class probabilities)
    rows: list[tuple[int, float, float, int, int, list[float]]] = field(default_factory=list, repr=False)


class ShadowGate:
    def _start_shadow(self, policy_id: str, st: Any, live: int, weights: dict, files: dict, meta: dict,
                      acc: float, live_acc: float) -> int:
        """Store the candidate and point the `shadow` stage at it; call under _eval."""
        fraction = self.config.shadow.fraction
        meta["gate"] = {**meta["gate"], "decision": "shadow",
                        "reason": f"{meta['gate'].get('reason')}; shadow on {fraction:.0%} of requests"}
        version = self.registry.publish(policy_id, weights, meta, files=files)
        with self._mu:
            st.shadow = Shadow(version, live, weights, meta, heldout_accuracy=acc, live_accuracy=live_acc)
        self.registry.promote(policy_id, version, stage=STAGE)
        self._emit("shadow_started", policy_id=policy_id, version=version, live=live, fraction=fraction)
        return version

    def _shadow_busy(self, policy_id: str, st: Any) -> dict | None:
        """A `dropped` answer while a shadow runs (one past `max_s` is ended first); call under _eval."""
        shadow = st.shadow
        if shadow is not None and time.time() - shadow.started > self.config.shadow.max_s:
            self._finish_shadow(policy_id, st, shadow, self._shadow_verdict(shadow))
            shadow = None
        if shadow is None:
            return None
        reason = f"a shadow (v{shadow.version}) scores live traffic; one experiment at a time"
        with self._mu:
            st.dropped += 1
        self._emit("gate_dropped", policy_id=policy_id, reason=reason)
        return {"policy_id": policy_id, "decision": "dropped", "version": None, "reason": reason}

    def shadow_rows(self, policy_id: str, rows: Sequence[Mapping[str, Any]]) -> int:
        """Joined feedback of events the shadow answered too (the joiner's); returns how many it kept.
        Rows of another shadow version, or served by a version other than the shadow's live, are
        skipped; so are rows without a propensity, or without label and reward."""
        cfg = self.config.shadow
        with self._mu:
            st = self._state(policy_id)
            shadow = st.shadow
            if shadow is None:
                return 0
            kept = [r for v, served, r in filter(None, map(_shadow_row, rows))
                    if v == shadow.version and served == shadow.live]
            shadow.rows.extend(kept)
            due = len(shadow.rows) >= cfg.min_rows or time.time() - shadow.started > cfg.max_s
        if due:
            with self._eval:
                if st.shadow is shadow:
                    self._finish_shadow(policy_id, st, shadow, self._shadow_verdict(shadow))
        return len(kept)

    def _shadow_verdict(self, shadow: Shadow) -> OPEVerdict:
        cfg, tolerance = self.config.shadow, self.config.tolerance
        with self._mu:
            rows = list(shadow.rows)
        if len(rows) < cfg.min_rows:
            return OPEVerdict("refuse", f"not enough shadow evidence: {len(rows)} of {cfg.min_rows} joined "
                                        f"feedbacks in {cfg.max_s:g}s", {"n": len(rows)})
        actions, mu, rewards, labels, answers, probs = zip(*rows)
        probs = np.asarray(probs, dtype=np.float64)
        answered = np.zeros_like(probs)
        answered[np.arange(len(rows)), answers] = 1.0
        c, l, d = compare(answered, greedy(probs), Logged.of(actions, mu, rewards, labels), cfg.method,
                          reward_model=probs, samples=cfg.bootstrap_samples, level=cfg.level, seed=self.seed)
        return decide(c, l, d, tolerance, "shadow")

    def _finish_shadow(self, policy_id: str, st: Any, shadow: Shadow, verdict: OPEVerdict) -> None:
        """Record the verdict, clear the stage, then canary, live or refused; call under _eval."""
        evidence = {"stage": STAGE, "decision": verdict.decision, "reason": verdict.reason, **verdict.evidence,
                    "exposure": len(shadow.rows), "duration_s": round(time.time() - shadow.started, 1)}
        gate = dict(shadow.meta.get("gate") or {})
        gate["stages"] = [*gate.get("stages", []), evidence]
        self.registry.clear(policy_id, STAGE)
        with self._mu:
            st.shadow = None
        decision, reason = verdict.decision, verdict.reason
        live_now = self._refresh_live(policy_id, st)
        if decision == "promote" and live_now != shadow.live:  # judged against a version no longer live
            decision, reason = "refuse", f"{reason}; but live changed to v{live_now} meanwhile"
            evidence.update(decision=decision, reason=reason)
        if decision == "promote" and "canary" in self.config.stages:
            decision, gate = "canary", self._canary_gate({**gate, "reason": reason})
            reason = gate["reason"]
        else:
            gate.update(decision=decision, reason=reason)
        self.registry.update_metadata(policy_id, shadow.version, gate=gate)
        self._emit("shadow_ended", policy_id=policy_id, version=shadow.version, **evidence)
        if decision == "canary":
            self._run_canary(policy_id, st, shadow.version, shadow.live, shadow.weights, {**shadow.meta, "gate": gate},
                             shadow.heldout_accuracy, shadow.live_accuracy)
        elif decision == "promote" and promote_over(self.registry, policy_id, shadow.version, shadow.live):
            self.publisher.restore(policy_id, shadow.weights, shadow.version, self.spec)
            self._went_live(st, shadow.version)
        elif decision == "promote":  # live moved between the check above and the swap
            decision, reason = "refuse", f"{reason}; but live changed meanwhile"
            evidence.update(decision=decision, reason=reason)
            gate.update(decision=decision, reason=reason)
            self.registry.update_metadata(policy_id, shadow.version, gate=gate)
        self._record(policy_id, st, shadow.version, shadow.live, decision, reason, shadow.heldout_accuracy,
                     shadow.live_accuracy, lineage_parent=shadow.meta.get("parent_version"), gate=gate)

    def shadow(self, policy_id: str) -> dict | None:
        """The shadow in flight: version, live, rows joined so far (None: none)."""
        with self._mu:
            shadow = self._state(policy_id).shadow
            if shadow is None:
                return None
            cfg = self.config.shadow
            return {"version": shadow.version, "live": shadow.live, "started": shadow.started,
                    "rows": len(shadow.rows), "min_rows": cfg.min_rows, "fraction": cfg.fraction}


def _shadow_row(r: Mapping[str, Any]) -> tuple[int, int, tuple] | None:
    """(shadow version, serving version, the row for the comparison), or None when it says nothing."""
    label = -1 if r.get("label") is None else int(r["label"])
    action = int(r["prediction"])
    reward = float(action == label) if label >= 0 else r.get("reward")
    mu = r.get("propensity")
    if reward is None or mu is None or not 0 < float(mu) <= 1 or r.get("shadow_prediction") is None:
        return None
    row = (action, float(mu), float(reward), label, int(r["shadow_prediction"]), [float(p) for p in r["probs"]])
    return int(r["shadow_version"]), int(r["policy_version"]), row
