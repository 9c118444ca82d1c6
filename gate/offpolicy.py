"""The off-policy decision rule the `ope` and `shadow` stages share: candidate against live on logged decisions.

    c, l, d       estimates of the candidate's value, live's, and of candidate - live with its
                  bootstrap interval (core/stats/ope.py), from the policy kind
    inconclusive  fewer effective units than `min_ess`: the estimate says nothing either way; the
                  candidate passes to the next stage, which decides
    refuse        the whole interval on the difference lies below -tolerance, or (rule `observed`)
                  the observed difference does: never promoted on the strength of a wide interval
                  alone, as the held-out stage's test (core/stats/paired.py)
    promote       otherwise
"""

from __future__ import annotations

from core.stats.ope import Estimate
from gate.stage import Verdict


def decide(c: Estimate, l: Estimate, d: Estimate, said: str, tolerance: float, rule: str = "observed",
           min_ess: float = 0.0, units: str = "rows") -> Verdict:
    evidence = {"method": d.method, "n": d.n, "labeled": d.labeled, "ess": round(d.ess, 1),
                "candidate": round(c.value, 4), "candidate_ci": [round(c.low, 4), round(c.high, 4)],
                "live": round(l.value, 4), "diff": round(d.value, 4), "diff_ci": [round(d.low, 4), round(d.high, 4)],
                "level": d.level}
    if d.ess < min_ess:
        return Verdict("promote", f"{said}: inconclusive (fewer than {min_ess:g} effective {units})",
                       {**evidence, "verdict": "inconclusive"})
    if d.high < -tolerance:
        return Verdict("refuse", f"{said}: worse than live beyond {tolerance:.3f}", {**evidence, "verdict": "worse"})
    if rule == "observed" and d.value < -tolerance:
        return Verdict("refuse", f"{said}: observed worse than live beyond {tolerance:.3f}",
                       {**evidence, "verdict": "worse"})
    return Verdict("promote", f"{said}: not worse than live beyond {tolerance:.3f}", {**evidence, "verdict": "not worse"})


def describe(what: str, c: Estimate, l: Estimate, d: Estimate) -> str:
    """One-step decisions (rows): the estimator, the evidence, both values and the difference."""
    return (f"{what} ({d.method}, {d.n} rows, {d.labeled} labeled): candidate {c.value:.3f}, "
            f"live {l.value:.3f}, diff {d.value:+.3f} [{d.low:+.3f}, {d.high:+.3f}]")
