"""The `groups` stage: a candidate may not buy a new group with an old one.

The `heldout` stage's one test weighs the groups as the fixed held-out set holds them, so a
candidate that learned the group the traffic is on now can pass while it forgot another.  This
stage judges each group on its own:

    groups     a group of the data (`data.group_column`: the kind's `group_of(input)`) enters once
               live traffic brings feedback from it, and stays
    slice      per group: its rows of the fixed held-out set, and its newest held-out feedback
               (the recent slice's rows, `groups.feedback_rows` at most): a group the fixed set
               lacks enters with its feedback
    test       per group with `groups.min_rows` rows: the gate's paired test (`gate.test`) of the
               candidate against live, one-sided for "worse by more than `groups.tolerance`";
               the p-values of all groups judged share `groups.alpha` (Holm or Bonferroni:
               core/stats/multiple.py)
    verdict    refuse, naming every group the test finds worse (the worst first); else promote.
               The evidence holds each group's accuracies, difference, p-value and level
"""

from __future__ import annotations

from collections import deque
from typing import Any, Sequence

import numpy as np

from core.config.gate import GroupsSection
from core.stats.multiple import levels
from core.stats.paired import GateResult, compare
from gate.evidence import Evidence
from gate.pointer import GateError
from gate.stage import Candidate, Stage, Verdict, register_stage


@register_stage("groups", settings=GroupsSection, needs=("groups",))
class GroupNonRegression(Stage):
    settings: GroupsSection

    def __init__(self, policy: Any, settings: GroupsSection):
        super().__init__(policy, settings)
        kind = policy.kind
        if getattr(kind, "groups", None) is None:
            raise GateError("gate.stages: 'groups' needs the held-out rows' groups (data.group_column)")
        self.fixed = {str(g): np.flatnonzero(kind.groups == g) for g in sorted(set(kind.groups.tolist()))}
        self.seen: dict[str, int] = {}  # group -> feedback rows from it, in order of arrival
        self.fed: dict[str, deque[tuple[Any, int]]] = {}  # group -> its newest held-out feedback rows

    def feed(self, evidence: Sequence[Evidence]) -> int:
        group_of, taken = self.policy.kind.group_of, 0
        with self.lock:
            for ev in evidence:
                for item in ev.inputs or ():
                    group = group_of(item)
                    if group is not None:
                        self.seen[group] = self.seen.get(group, 0) + 1
                        taken += 1
                if ev.example is not None and self.settings.feedback_rows > 0:
                    group = group_of(ev.example[0])
                    if group is not None:
                        self.fed.setdefault(group, deque(maxlen=self.settings.feedback_rows)).append(ev.example)
        return taken

    def judge(self, cand: Candidate) -> Verdict:
        cfg = self.settings
        with self.lock:
            seen = list(self.seen)
            fed = {g: list(rows) for g, rows in self.fed.items() if g in self.seen}
        pairs = self._pairs(cand, seen, fed)
        judged = {g: p for g, p in pairs.items() if p[0].size >= cfg.min_rows}
        waiting = sorted(set(seen) - set(judged))
        if not judged:
            return Verdict("promote", f"no group judged yet ({len(seen)} seen, none with {cfg.min_rows} rows)",
                           {"groups": {}, "waiting": waiting})
        results = {g: self._test(c, l) for g, (c, l) in judged.items()}
        at = levels({g: r.p_value for g, r in results.items()}, cfg.alpha, cfg.correction)
        worse = sorted((g for g, r in results.items() if r.p_value < at[g]), key=lambda g: results[g].diff)
        evidence = {"groups": {g: _figures(r, at[g]) for g, r in results.items()}, "waiting": waiting,
                    "correction": cfg.correction}
        if worse:
            said = "; ".join(_lost(g, results[g], at[g]) for g in worse)
            return Verdict("refuse", f"forgets group {worse[0]!r}: {said} ({cfg.correction} over {len(results)} "
                                     f"groups at alpha {cfg.alpha})", {**evidence, "worse": worse})
        low = min(results, key=lambda g: results[g].diff)
        return Verdict("promote", f"no group lost more than {cfg.tolerance:.3f} ({len(results)} groups, {cfg.correction} "
                                  f"at alpha {cfg.alpha}; lowest {low!r} diff {results[low].diff:+.4f})", evidence)

    def figures(self) -> dict[str, Any]:
        with self.lock:
            return {"seen": dict(self.seen), "feedback_rows": {g: len(rows) for g, rows in self.fed.items()}}

    def _pairs(self, cand: Candidate, seen: list[str], fed: dict[str, list]) -> dict[str, tuple[np.ndarray, np.ndarray]]:
        """Per group seen: (candidate right, live right) on its fixed held-out rows and its held-out
        feedback; the feedback is scored here, both versions in one batch each (under deciding)."""
        policy = self.policy
        live_fixed = policy.correct(cand.live)
        rows = [row for g in seen for row in fed.get(g, [])]
        if rows:
            cand_fed = policy.kind.correct(cand.model, rows)
            live_fed = policy.kind.correct(policy.model(cand.live), rows)
        out, at = {}, 0
        for g in seen:
            index = self.fixed.get(g, np.zeros(0, dtype=int))
            c, l = cand.correct[index], live_fixed[index]
            k = len(fed.get(g, []))
            if k:
                c, l = np.concatenate([c, cand_fed[at:at + k]]), np.concatenate([l, live_fed[at:at + k]])
                at += k
            out[g] = (c, l)
        return out

    def _test(self, cand: np.ndarray, live: np.ndarray) -> GateResult:
        gate, cfg = self.policy.settings, self.settings
        return compare(cand, live, test=gate.test, tolerance=cfg.tolerance, alpha=cfg.alpha,
                       bootstrap_samples=gate.bootstrap_samples, seed=self.policy.seed)


def _figures(r: GateResult, level: float) -> dict[str, Any]:
    return {"n": r.n, "candidate_accuracy": r.candidate_accuracy, "live_accuracy": r.live_accuracy, "diff": r.diff,
            "wins": r.wins, "losses": r.losses, "p_value": r.p_value, "level": level}


def _lost(group: str, r: GateResult, level: float) -> str:
    return (f"{group!r} {r.live_accuracy:.3f} -> {r.candidate_accuracy:.3f}, diff {r.diff:+.4f} "
            f"({r.wins} wins, {r.losses} losses of {r.n}), p={r.p_value:.3g} < {level:.3g}")
