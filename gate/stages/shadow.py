"""The `shadow` stage: the candidate also answers a share of live requests, judged on their feedback.

    judge   replicas classify `gate.shadow.fraction` of predict requests with the candidate too,
            greedily (serving/stage_follower.py); the client gets live's answer, the event both
    feed    joined feedback of those events, kept while it names this shadow and the live version
            it was judged against
    poll    `min_rows` of them: the kind compares the shadow's answers with live's on the same rows
            (off-policy: a labeled row tells the candidate's reward exactly, a reward-only row only
            where it agrees with what was served) under the shared rule (gate/offpolicy.py); no
            `min_rows` within `max_s`: refused for lack of evidence, so a quiet endpoint never holds
            the gate
"""

from __future__ import annotations

import time
from typing import Any, Sequence

from core.config.gate import ShadowSection
from gate.evidence import Evidence
from gate.offpolicy import decide
from gate.stage import BESIDE_LIVE, Candidate, Verdict, register_stage
from gate.stages.traffic import Experiment, TrafficStage


@register_stage("shadow", settings=ShadowSection, exposure=BESIDE_LIVE, needs=("shadow",))
class Shadow(TrafficStage):
    doing = "scores live traffic"

    def judge(self, cand: Candidate) -> Verdict:
        self._begin(cand, [])
        fraction = self.settings.fraction
        return Verdict("pending", f"shadow on {fraction:.0%} of requests", {"fraction": fraction})

    def feed(self, evidence: Sequence[Evidence]) -> int:
        with self.lock:
            run = self.run
            if run is None:
                return 0
            cand = run.candidate
            kept = [ev.shadow[1] for ev in evidence
                    if ev.shadow is not None and ev.shadow[0] == cand.version and ev.version == cand.live]
            run.state.extend(kept)
        return len(kept)

    def poll(self) -> Verdict | None:
        cfg = self.settings
        with self.lock:
            run = self.run
            if run is None or (len(run.state) < cfg.min_rows and time.time() - run.started <= cfg.max_s):
                return None
            self.run = None
        return self._verdict(run)

    def end(self, reason: str) -> Verdict | None:
        run = self._over()
        return None if run is None else Verdict("refuse", reason, self._exposure(run))

    def _verdict(self, run: Experiment) -> Verdict:
        cfg, rows = self.settings, list(run.state)
        if len(rows) < cfg.min_rows:
            return Verdict("refuse", f"not enough shadow evidence: {len(rows)} of {cfg.min_rows} joined feedbacks "
                                     f"in {cfg.max_s:g}s", {"n": len(rows), **self._exposure(run)})
        c, l, d, said = self.policy.kind.shadow(rows, cfg, self.policy.seed)
        verdict = decide(c, l, d, said, self.policy.settings.tolerance)
        return Verdict(verdict.decision, verdict.reason, {**verdict.evidence, **self._exposure(run)})

    @staticmethod
    def _exposure(run: Experiment) -> dict[str, Any]:
        return {"exposure": len(run.state), "duration_s": run.duration_s}

    def figures(self) -> dict[str, Any]:
        with self.lock:
            run = self.run
            if run is None:
                return {}
            cfg = self.settings
            return {**self._figures(run), "rows": len(run.state), "min_rows": cfg.min_rows, "fraction": cfg.fraction}
