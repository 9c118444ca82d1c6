"""The publish gate's stages after the held-out set: `gate.stages` in order, each verdict kept as evidence.

    heldout   the paired test on the fixed held-out set (serving/gate.py; with `adapt`, also the
              recent slice): refuse ends the candidate's way here
    ope       the off-policy slice (serving/ope_slice.py): the candidate's estimated value on
              held-back live feedback against live's; refuse when its interval lies below
              -tolerance
    shadow, canary  on live traffic, after these (serving/gate_shadow.py, serving/gate_canary.py)

A stage list without `heldout` still scores the held-out set (the lineage's
`heldout_accuracy` and the forgetting guard's matrix), but its verdict does
not decide.  Every stage's verdict and evidence go into the registry lineage
(`gate.stages`) and the `gate_decision` event.

`PublishGate` inherits this; it uses the gate's state, locks and registry.
"""

from __future__ import annotations

from dataclasses import replace
from typing import Any, Mapping, Sequence

from core.models.classifier import ClassifierBundle
from serving.ope_slice import OPESlice


class OffPolicyGate:
    def offpolicy(self, policy_id: str, rows: Sequence[Mapping[str, Any]]) -> int:
        """Joined feedback rows the learner never sees (the joiner's `gate.ope.fraction`); returns how
        many the slice took (rows without a propensity, or without label and reward, are skipped)."""
        with self._mu:
            st = self._state(policy_id)
            if st.offpolicy is None:
                st.offpolicy = OPESlice(self.config.ope.size, self.config.ope.min_rows)
            return st.offpolicy.add(rows)

    def _staged(self, policy_id: str, st: Any, live: int, candidate: ClassifierBundle, heldout):
        """(the decision after every stage, the stages' verdicts in order); call under _eval."""
        cfg = self.config
        trail: list[dict[str, Any]] = []
        result = heldout if "heldout" in cfg.stages else replace(
            heldout, decision="promote", reason=f"held-out set measured ({heldout.candidate_accuracy:.3f}), "
                                                 "not a stage")
        for stage in cfg.stages:
            if stage == "heldout":
                trail.append({"stage": "heldout", "decision": heldout.decision, "reason": heldout.reason})
                if heldout.decision != "promote":
                    return heldout, trail
            elif stage == "ope":
                with self._mu:
                    if st.offpolicy is None:
                        st.offpolicy = OPESlice(cfg.ope.size, cfg.ope.min_rows)
                verdict = st.offpolicy.judge(candidate, self._bundle(policy_id, live), cfg, self.seed)
                trail.append({"stage": "ope", "decision": verdict.decision, "reason": verdict.reason,
                              **verdict.evidence})
                if verdict.decision != "promote":
                    return replace(result, decision="refuse", reason=verdict.reason), trail
                result = replace(result, reason=f"{result.reason}; {verdict.reason}")
        return result, trail  # `shadow` and `canary` run after these, on live traffic
