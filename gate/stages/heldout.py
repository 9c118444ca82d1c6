"""The `heldout` stage: the candidate against live on the kind's fixed held-out set, and two guards.

    measure      each side's correctness on the same examples, the paired test (core/stats/paired.py):
                 done for every candidate of a kind with a held-out set, stage or not (the lineage's
                 heldout_accuracy, the curve, the continual-learning matrix)
    drift guard  each step may lose up to `tolerance` to live, so a chain of them can slide far below
                 the best version the loop had: the candidate is tested against that one too
                 (`gate.drift_guard`; the paired test only: the point-estimate rule against a stale
                 best would freeze the loop)
    recent slice with `adapt`, a candidate worse than live on the newest feedback is refused however
                 it does on the fixed set, which then only guards against forgetting
"""

from __future__ import annotations

from dataclasses import replace
from typing import Any

from core.stats.paired import GateResult, compare
from gate.stage import Candidate, Stage, Verdict, register_stage

RECENT_FIELDS = ("decision", "candidate_accuracy", "live_accuracy", "diff", "p_value", "n", "wins", "losses")


def measure(policy: Any, cand: Candidate) -> GateResult:
    cfg = policy.settings
    return compare(cand.correct, policy.correct(cand.live), test=cfg.test, tolerance=cfg.tolerance, alpha=cfg.alpha,
                   min_gain=cfg.min_gain, bootstrap_samples=cfg.bootstrap_samples, seed=policy.seed)


@register_stage("heldout", needs=("heldout",))
class HeldOut(Stage):
    def judge(self, cand: Candidate) -> Verdict:
        result = cand.measured
        if result.decision == "promote" and self.policy.settings.drift_guard:
            result = self._against_best(cand, result)
        recent = self.policy.recent
        if result.decision == "promote" and recent is not None and recent.ready():
            result = self._on_recent(cand, result)
        return Verdict(result.decision, result.reason)

    def _against_best(self, cand: Candidate, result: GateResult) -> GateResult:
        cfg, scored = self.policy.settings, self.policy.scored()
        known = [v for v in self.policy.ever_live if v != cand.live and v in scored]
        best = max(known, key=lambda v: float(scored[v].mean()), default=None)
        if best is None or scored[best].mean() <= scored[cand.live].mean():
            return result
        vs = compare(cand.correct, scored[best], test=cfg.test, tolerance=cfg.tolerance, alpha=cfg.alpha,
                     bootstrap_samples=cfg.bootstrap_samples, seed=self.policy.seed)
        if vs.p_value is None or vs.p_value >= cfg.alpha:
            return result
        reason = (f"drifted: worse than v{best} (the best version live so far, {vs.live_accuracy:.3f}) by more than "
                  f"{cfg.tolerance:.3f}: diff {vs.diff:+.4f} ({vs.wins} wins, {vs.losses} losses of {vs.n}), "
                  f"p={vs.p_value:.3g} < alpha={cfg.alpha}")
        return replace(result, decision="refuse", reason=reason)

    def _on_recent(self, cand: Candidate, result: GateResult) -> GateResult:
        vs = self.policy.recent.compare(cand.model, self.policy.model(cand.live), self.policy.settings,
                                        self.policy.seed)
        cand.gate["recent"] = {k: getattr(vs, k) for k in RECENT_FIELDS}
        if vs.decision != "refuse":
            return result
        return replace(result, decision="refuse",
                       reason=f"on the recent slice ({vs.n} rows of the newest feedback): {vs.reason}")
