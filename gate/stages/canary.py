"""The `canary` stage: a sticky share of clients answered by the candidate until a sequential test decides.

    judge   the candidate's experiment starts: replicas answer `gate.canary.fraction` of client keys
            with it (serving/stage_follower.py), each client staying on one side
    feed    each unit's score goes to the candidate's arm or live's (core/stats/sequential.py): a
            joined feedback's reward, an episode's return on the [0, 1] scale
    poll    abort (significantly worse than live): refused; promote (not worse, with evidence, or
            at the exposure cap): on to live
"""

from __future__ import annotations

from typing import Any, Sequence

from core.config.gate import CanarySection
from core.stats.sequential import CanaryTest
from gate.evidence import Evidence
from gate.stage import ON_LIVE, Candidate, Verdict, register_stage
from gate.stages.traffic import Experiment, TrafficStage


@register_stage("canary", settings=CanarySection, exposure=ON_LIVE, needs=("score",))
class Canary(TrafficStage):
    doing = "is on live traffic"

    def judge(self, cand: Candidate) -> Verdict:
        c = self.settings
        self._begin(cand, CanaryTest(tolerance=self.policy.settings.tolerance, alpha=c.alpha,
                                     max_requests=c.max_requests, min_requests=c.min_requests, n_opt=c.n_opt))
        return Verdict("pending", f"canary on {c.fraction:.0%} of clients", {"fraction": c.fraction})

    def feed(self, evidence: Sequence[Evidence]) -> int:
        taken = 0
        with self.lock:
            run = self.run
            if run is None:
                return 0
            for ev in evidence:
                if ev.score is None or ev.version is None:
                    continue
                if ev.version == run.candidate.version:
                    run.state.add("candidate", ev.score)
                elif ev.version == run.candidate.live:
                    run.state.add("live", ev.score)
                else:
                    continue
                taken += 1
        return taken

    def poll(self) -> Verdict | None:
        with self.lock:
            run = self.run
            if run is None:
                return None
            decision, reason = run.state.decision()
            if decision == "continue":
                return None
            self.run = None
        return self._verdict(run, "promote" if decision == "promote" else "refuse", reason)

    def end(self, reason: str) -> Verdict | None:
        run = self._over()
        return None if run is None else self._verdict(run, "refuse", f"{run.state.decision()[1]}; {reason}")

    def _verdict(self, run: Experiment, decision: str, reason: str) -> Verdict:
        return Verdict(decision, reason, {"duration_s": run.duration_s, "unit": self.policy.kind.unit,
                                          **run.state.evidence()})

    def figures(self) -> dict[str, Any]:
        with self.lock:
            run = self.run
            return {} if run is None else {**self._figures(run), **run.state.evidence()}
