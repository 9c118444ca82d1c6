"""The `ope` stage: the candidate's value on logged live decisions it was never trained on, against live's.

    feed    logged decisions the kind keeps (a text classifier's held-back feedback rows, whatever
            version served them; an RL policy's episodes of the live version), the newest `size`
    judge   fewer than `min_rows`: refused for lack of evidence; else the kind's estimates
            (gate/kinds/) under the shared rule (gate/offpolicy.py)
"""

from __future__ import annotations

from collections import deque
from typing import Any, Sequence

from core.config.gate import OPESection
from gate.evidence import Evidence
from gate.offpolicy import decide
from gate.stage import Candidate, Stage, Verdict, register_stage


@register_stage("ope", settings=OPESection, needs=("logged",))
class OffPolicy(Stage):
    def __init__(self, policy: Any, settings: OPESection):
        super().__init__(policy, settings)
        self.rows: deque[tuple[int | None, Any]] = deque(maxlen=settings.size)  # (serving version, logged)

    def feed(self, evidence: Sequence[Evidence]) -> int:
        kind, live = self.policy.kind, self.policy.live_version
        kept = [(ev.version, ev.logged) for ev in evidence if ev.logged is not None and kind.ope_keeps(ev.version, live)]
        with self.lock:
            self.rows.extend(kept)
        return len(kept)

    def on_live(self, version: int | None) -> None:
        kind = self.policy.kind
        with self.lock:
            kept = [(v, x) for v, x in self.rows if kind.ope_keeps(v, version)]
            self.rows.clear()
            self.rows.extend(kept)

    def judge(self, cand: Candidate) -> Verdict:
        cfg, kind = self.settings, self.policy.kind
        with self.lock:
            rows = [x for _, x in self.rows]  # both sides are judged on the same rows
        if len(rows) < cfg.min_rows:
            return Verdict("refuse", f"not enough off-policy evidence yet: {len(rows)} of {cfg.min_rows} "
                                     f"{kind.logged_units}", {"n": len(rows)})
        c, l, d, said = kind.off_policy(cand.model, lambda: self.policy.model(cand.live), rows, cfg, self.policy.seed)
        return decide(c, l, d, said, self.policy.settings.tolerance, cfg.rule, cfg.min_ess, f"{kind.unit}s")

    def figures(self) -> dict[str, Any]:
        with self.lock:
            return {"rows": len(self.rows)}

