"""An always-valid comparison of two reward streams: the canary's sequential test.

Live and candidate answer disjoint shares of traffic; each joined feedback adds a reward in
[0, 1] to its arm.  After every observation the test may be read and a decision taken, as
often as one likes, without inflating the error rate: each arm's mean gets an asymptotic
confidence sequence (Waudby-Smith, Arbour, Sinha, Kennedy and Ramdas, "Time-uniform central
limit theory", 2021; Robbins' normal mixture),

    mean_n +- s_n * sqrt( 2 (n rho^2 + 1) / (n^2 rho^2) * log( sqrt(n rho^2 + 1) / a ) )

valid at every n at once with probability 1 - a (asymptotically), rho tuned to be tightest
near `n_opt` observations.  The two arms get a = alpha / 2 each, so the difference's
interval [lo_c - hi_l, hi_c - lo_l] covers the true difference at all times with probability
>= 1 - alpha.  Rules (tolerance t):

    abort     the whole difference interval lies below -t: significantly worse, stop at once
    promote   its lower end lies above -t: not worse beyond t, with evidence
    promote   the candidate's exposure reached `max_requests` without an abort (the cap: a
              canary that cannot be told from live does not run for ever)
    continue  otherwise

Plain numpy; the gate's `canary` stage (gate/stages/canary.py) feeds it.
"""

from __future__ import annotations

import math
from dataclasses import dataclass


@dataclass
class Arm:
    n: int = 0
    total: float = 0.0
    squares: float = 0.0

    def add(self, reward: float) -> None:
        self.n += 1
        self.total += reward
        self.squares += reward * reward

    @property
    def mean(self) -> float:
        return self.total / self.n if self.n else 0.0

    def interval(self, alpha: float, n_opt: int) -> tuple[float, float]:
        if self.n < 2:
            return 0.0, 1.0  # rewards lie in [0, 1]: nothing known yet
        var = max(self.squares / self.n - self.mean**2, 0.0)
        # a floor on the variance: an arm that has only seen 1s is not known exactly
        sd = math.sqrt(max(var, 0.25 / self.n))
        rho2 = (-2 * math.log(alpha) + math.log(-2 * math.log(alpha) + 1)) / n_opt
        n = self.n
        half = sd * math.sqrt(2 * (n * rho2 + 1) / (n * n * rho2) * math.log(math.sqrt(n * rho2 + 1) / alpha))
        return max(self.mean - half, 0.0), min(self.mean + half, 1.0)


@dataclass
class CanaryTest:
    tolerance: float = 0.01
    alpha: float = 0.05
    max_requests: int = 2000  # the candidate's exposure cap, in joined feedbacks
    min_requests: int = 30  # no decision on fewer of the candidate's
    n_opt: int = 500
    live: Arm | None = None
    candidate: Arm | None = None

    def __post_init__(self) -> None:
        self.live = self.live or Arm()
        self.candidate = self.candidate or Arm()

    def add(self, arm: str, reward: float) -> None:
        (self.candidate if arm == "candidate" else self.live).add(float(reward))

    def difference(self) -> tuple[float, float, float]:
        """(candidate - live, its always-valid lower and upper bounds)."""
        lo_c, hi_c = self.candidate.interval(self.alpha / 2, self.n_opt)
        lo_l, hi_l = self.live.interval(self.alpha / 2, self.n_opt)
        return self.candidate.mean - self.live.mean, lo_c - hi_l, hi_c - lo_l

    def decision(self) -> tuple[str, str]:
        """(continue | promote | abort, the reason)."""
        diff, low, high = self.difference()
        said = (f"canary: candidate {self.candidate.mean:.3f} on {self.candidate.n} requests, live "
                f"{self.live.mean:.3f} on {self.live.n}; diff {diff:+.3f}, always-valid "
                f"{1 - self.alpha:.0%} interval [{low:+.3f}, {high:+.3f}]")
        if self.candidate.n < self.min_requests:
            return "continue", said
        if high < -self.tolerance:
            return "abort", f"{said}: worse than live beyond {self.tolerance:.3f}"
        if low > -self.tolerance:
            return "promote", f"{said}: not worse than live beyond {self.tolerance:.3f}"
        if self.candidate.n >= self.max_requests:
            return "promote", f"{said}: exposure cap of {self.max_requests} reached without a significant drop"
        return "continue", said

    def evidence(self) -> dict:
        diff, low, high = self.difference()
        return {"candidate_requests": self.candidate.n, "live_requests": self.live.n,
                "candidate": round(self.candidate.mean, 4), "live": round(self.live.mean, 4),
                "diff": round(diff, 4), "diff_cs": [round(low, 4), round(high, 4)], "alpha": self.alpha}
