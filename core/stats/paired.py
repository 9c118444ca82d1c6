"""The publish gate's statistics: a paired comparison of a candidate with the live version.

Both versions are scored on the same fixed held-out examples, so the data are
pairs (candidate correct?, live correct?).  Only the discordant pairs carry
information about the difference:

    b = candidate right, live wrong   ("wins")
    c = candidate wrong, live right   ("losses")
    diff = acc_c - acc_l = (b - c) / n

Decision rule (one rule, two tests)
-----------------------------------
We test  H0: diff >= -tolerance  ("the candidate is acceptable")
against  H1: diff <  -tolerance  ("worse than live by more than tolerance")
one-sided at level alpha, and REFUSE only when H0 is rejected.  Equivalently:
refuse when the one-sided (1 - alpha) upper confidence bound of diff is below
-tolerance.

Why this direction and not the textbook non-inferiority test (H0: diff <=
-tolerance, promote only when rejected)?  The textbook test must *prove*
non-inferiority: with n = 1000 held-out rows, tolerance 0.01 and the 5-10 %
discordance two versions of an online learner have, its standard error
(~0.009) is as large as the margin, so a candidate exactly as good as live is
refused most of the time and the loop stalls.  Our rule gives both properties
the gate needs:

* an equal-or-better candidate is never refused: observed diff >= -tolerance
  implies the upper bound is >= -tolerance (deterministic, for any n), and a
  truly acceptable candidate is refused with probability <= alpha;
* a clearly worse one (a poisoned candidate, -20 points) is refused: its upper
  bound is about diff + 1.645 * sqrt((b + c)) / n, far below -tolerance for
  any held-out set of more than a few dozen rows.

The price: with a small held-out set a moderately worse candidate may pass the
test for lack of evidence.  So a second, plain rule stands next to it: a
candidate whose *observed* diff is below -tolerance is refused too, whatever the
p-value ("observed worse"); no promoted version is ever measured worse than its
parent beyond the tolerance.  The cost: an equally good candidate is refused
when noise puts it more than `tolerance` below live (with 1000 held-out rows
and 10 % discordance, about one time in six); the next candidate comes soon.
Chains of small accepted losses are the gate's job too: `gate/stages/heldout.py`
also tests each candidate against the best version ever live (the test alone,
so noise does not freeze the loop).

`min_gain > 0` adds a second, stricter requirement: observed diff >= min_gain
(else refuse, reason "no gain").  `min_gain == 0` (default) switches it off,
so a candidate slightly worse but within tolerance still goes live.

McNemar with a margin: conditional on m = b + c discordant pairs, b ~
Binomial(m, theta).  The boundary diff = -tolerance is theta0 = (1 - n*tol/m)/2
(m/n plugs in the discordance rate); p = P(B <= b | m, theta0).  Exact binomial
when m < `exact_below`; otherwise the normal approximation with continuity
correction, which for tolerance 0 is exactly McNemar's chi-square
(|b - c| - 1)^2 / (b + c), one-sided.  If n*tol >= m the candidate cannot be
worse by more than the tolerance even if every discordant pair is a loss: p = 1.

Paired bootstrap: resample the n pairs with replacement (fixed seed); p =
share of resampled diffs >= -tolerance, refuse when p < alpha (i.e. the
(1 - alpha) percentile of diff is below -tolerance).  A resample only needs the
counts of wins / losses / ties, so it is one multinomial draw per replicate.

Scores instead of right / wrong (a generator's mean reward on each held-out prompt): the same
rule on the mean of the per-example differences, by the paired bootstrap alone (resampling the
examples); `wins` / `losses` count the examples where the candidate scored higher / lower.

No scipy, no Ray: this module is pure math on numpy arrays.
"""

from __future__ import annotations

import math
from dataclasses import asdict, dataclass
from typing import Literal, Sequence

import numpy as np

Test = Literal["mcnemar", "bootstrap"]
Decision = Literal["promote", "refuse"]


@dataclass(frozen=True)
class GateResult:
    decision: Decision
    candidate_accuracy: float
    live_accuracy: float
    diff: float  # candidate - live, in accuracy (0..1)
    p_value: float | None  # one-sided, for H1 "worse than live beyond tolerance"
    ci: tuple[float, float] | None  # bootstrap only: (alpha, 1 - alpha) percentiles of diff
    test: str
    n: int
    reason: str
    wins: int = 0  # candidate right, live wrong
    losses: int = 0  # candidate wrong, live right
    tolerance: float = 0.0
    alpha: float = 0.05
    min_gain: float = 0.0

    def to_dict(self) -> dict:
        out = asdict(self)
        out["ci"] = list(self.ci) if self.ci is not None else None
        return out


@dataclass(frozen=True)
class PrequentialResult:
    rollback: bool
    events: int  # flags considered (at most `window`)
    windowed_accuracy: float | None
    measured_accuracy: float
    threshold: float  # measured - margin
    reason: str

    def to_dict(self) -> dict:
        return asdict(self)


# ---- distributions (no scipy) --------------------------------------------------------
def binom_cdf(k: int, m: int, p: float) -> float:
    """P(B <= k) for B ~ Binomial(m, p), summed in log space (exact up to float rounding)."""
    if k < 0:
        return 0.0
    if k >= m or p <= 0.0:
        return 1.0
    if p >= 1.0:
        return 0.0
    lp, lq, lm = math.log(p), math.log1p(-p), math.lgamma(m + 1)
    terms = [lm - math.lgamma(i + 1) - math.lgamma(m - i + 1) + i * lp + (m - i) * lq for i in range(k + 1)]
    top = max(terms)
    return min(1.0, math.exp(top) * sum(math.exp(t - top) for t in terms))


def normal_cdf(z: float) -> float:
    return 0.5 * math.erfc(-z / math.sqrt(2.0))


def chi2_1_sf(x: float) -> float:
    """P(X > x) for a chi-square with one degree of freedom."""
    return math.erfc(math.sqrt(max(x, 0.0) / 2.0))


# ---- the paired tests -----------------------------------------------------------------
def _pairs(candidate: Sequence[float] | np.ndarray, live: Sequence[float] | np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Both sides' scores as bool arrays when every one is right / wrong, else as floats."""
    c, l = np.asarray(candidate).ravel(), np.asarray(live).ravel()
    if _binary(c) and _binary(l):
        c, l = c.astype(bool), l.astype(bool)
    else:
        c, l = c.astype(np.float64), l.astype(np.float64)
        if not (np.isfinite(c).all() and np.isfinite(l).all()):
            raise ValueError("paired test needs finite scores")
    if c.shape != l.shape:
        raise ValueError(f"paired test needs the same examples: candidate has {c.size}, live has {l.size}")
    if c.size == 0:
        raise ValueError("paired test needs at least one held-out example")
    return c, l


def _binary(x: np.ndarray) -> bool:
    return x.dtype == bool or bool(np.isin(x, (0, 1)).all())


def bootstrap_scores(diffs: np.ndarray, tolerance: float, alpha: float, samples: int,
                     seed: int = 0) -> tuple[float, tuple[float, float]]:
    """The paired bootstrap on per-example score differences (candidate - live): (p, (lo, hi)) as
    `bootstrap_noninferiority`, resampling the examples themselves."""
    rng = np.random.default_rng(seed)
    means = diffs[rng.integers(0, diffs.size, (samples, diffs.size))].mean(1)
    p = float(np.mean(means >= -tolerance - 1e-12))
    lo, hi = np.quantile(means, [alpha, 1.0 - alpha])
    return p, (float(lo), float(hi))


def mcnemar_noninferiority_p(wins: int, losses: int, n: int, tolerance: float, exact_below: int = 25) -> tuple[float, str]:
    """One-sided p-value for "candidate worse than live by more than `tolerance`"; and which variant ran."""
    m = wins + losses
    if m == 0 or n * tolerance >= m:
        return 1.0, "mcnemar"  # no disagreement, or too little of it to lose `tolerance`
    theta0 = 0.5 * (1.0 - n * tolerance / m)
    if m < exact_below:
        return binom_cdf(wins, m, theta0), "mcnemar-exact"
    sd = math.sqrt(m * theta0 * (1.0 - theta0))
    return normal_cdf((wins + 0.5 - m * theta0) / sd), "mcnemar-chi2cc"


def bootstrap_noninferiority(wins: int, losses: int, n: int, tolerance: float, alpha: float, samples: int,
                             seed: int = 0) -> tuple[float, tuple[float, float]]:
    """(p, (lo, hi)): p = share of resampled diffs >= -tolerance; lo/hi = alpha / 1-alpha percentiles."""
    rng = np.random.default_rng(seed)
    ties = n - wins - losses
    counts = rng.multinomial(n, [wins / n, losses / n, ties / n], size=samples)
    diffs = (counts[:, 0] - counts[:, 1]) / n
    p = float(np.mean(diffs >= -tolerance - 1e-12))
    lo, hi = np.quantile(diffs, [alpha, 1.0 - alpha])
    return p, (float(lo), float(hi))


def compare(candidate: Sequence[bool] | np.ndarray, live: Sequence[bool] | np.ndarray, *, test: Test = "mcnemar",
            tolerance: float = 0.01, alpha: float = 0.05, min_gain: float = 0.0, bootstrap_samples: int = 1000,
            seed: int = 0, exact_below: int = 25) -> GateResult:
    """The gate's decision for one candidate; see the module docstring for the rule."""
    if not 0 < alpha < 1:
        raise ValueError(f"alpha must be in (0, 1), got {alpha}")
    if tolerance < 0 or min_gain < 0:
        raise ValueError("tolerance and min_gain must be >= 0")
    c, l = _pairs(candidate, live)
    n, binary = int(c.size), c.dtype == bool
    wins, losses = int(np.sum(c > l)), int(np.sum(c < l))
    acc_c, acc_l = float(c.mean()), float(l.mean())
    diff = (wins - losses) / n if binary else float(np.mean(c - l))
    ci = None
    if test == "mcnemar":
        if not binary:
            raise ValueError("mcnemar compares right / wrong answers; scores between 0 and 1 need test 'bootstrap'")
        p, name = mcnemar_noninferiority_p(wins, losses, n, tolerance, exact_below)
    elif test == "bootstrap":
        p, ci = (bootstrap_noninferiority(wins, losses, n, tolerance, alpha, bootstrap_samples, seed) if binary
                 else bootstrap_scores(c - l, tolerance, alpha, bootstrap_samples, seed))
        name = "bootstrap"
    else:
        raise ValueError(f"unknown test {test!r} (use 'mcnemar' or 'bootstrap')")
    if p < alpha:
        decision: Decision = "refuse"
        reason = (f"worse than live by more than {tolerance:.3f}: diff {diff:+.4f} "
                  f"({wins} wins, {losses} losses of {n}), p={p:.3g} < alpha={alpha}")
    elif diff < -tolerance:
        # The test lacks the evidence to call it worse, but the held-out set says it lost more than
        # the tolerance: a promoted version is never observed worse than its parent beyond it.
        decision = "refuse"
        reason = (f"observed worse than live by more than {tolerance:.3f}: diff {diff:+.4f} "
                  f"({wins} wins, {losses} losses of {n}), p={p:.3g}")
    elif min_gain > 0 and diff < min_gain:
        decision = "refuse"
        reason = f"no gain: diff {diff:+.4f} < min_gain {min_gain}"
    else:
        decision = "promote"
        reason = (f"not worse than live beyond {tolerance:.3f}: diff {diff:+.4f} "
                  f"({wins} wins, {losses} losses of {n}), p={p:.3g} >= alpha={alpha}")
    return GateResult(decision, acc_c, acc_l, diff, p, ci, name, n, reason, wins, losses, tolerance, alpha, min_gain)


# ---- prequential monitoring -----------------------------------------------------------
def prequential_check(correct_flags: Sequence[bool] | np.ndarray, measured_accuracy: float, window: int,
                      margin: float) -> PrequentialResult:
    """Roll back when the live version's accuracy on its last `window` feedback events is below
    what the gate measured on the held-out set minus `margin`.

    The margin absorbs what separates the two numbers without anything being wrong: label
    noise in the feedback, and traffic drawn from a different slice than the held-out set.
    No decision before `window` events: a short run of bad luck must not roll back.
    """
    if window < 1:
        raise ValueError(f"window must be >= 1, got {window}")
    flags = np.asarray(correct_flags, dtype=bool).ravel()[-window:]
    return prequential_check_counts(float(flags.sum()), int(flags.size), measured_accuracy, window, margin)


def prequential_check_counts(correct: float, n: int, measured_accuracy: float, window: int,
                             margin: float) -> PrequentialResult:
    """The same rule on counts over the last `n <= window` events (what the feedback joiner keeps).

    `correct` may be fractional: reward-only feedback counts its reward (1 = the prediction was right).
    """
    if window < 1:
        raise ValueError(f"window must be >= 1, got {window}")
    if n > window:
        raise ValueError(f"counts over {n} events, more than the window of {window}")
    threshold = measured_accuracy - margin
    acc = correct / n if n else None
    if n < window:
        return PrequentialResult(False, n, acc, measured_accuracy, threshold, f"only {n} of {window} events")
    if acc < threshold - 1e-9:  # float noise at the boundary (0.8 - 0.1 = 0.7000000000000001)
        return PrequentialResult(True, n, acc, measured_accuracy, threshold,
                                 f"accuracy on the last {window} feedback events {acc:.3f} < "
                                 f"held-out {measured_accuracy:.3f} - margin {margin}")
    return PrequentialResult(False, n, acc, measured_accuracy, threshold,
                             f"accuracy on the last {window} feedback events {acc:.3f} >= {threshold:.3f}")
