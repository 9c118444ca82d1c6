"""Many tests at once: which of m null hypotheses to reject so that the chance of rejecting any
true one stays at most alpha (the family-wise error rate).

    bonferroni  reject p_i < alpha / m
    holm        step-down: sort the p-values, reject p_(k) < alpha / (m - k) for k = 0, 1, ...
                until the first that is not; never rejects less than Bonferroni, same guarantee
                (Holm 1979), no assumption on how the tests depend on each other

Pure math on plain lists: the gate's `groups` stage runs one paired test per group.
"""

from __future__ import annotations

from typing import Literal, Mapping

Correction = Literal["holm", "bonferroni"]


def levels(p_values: Mapping[str, float], alpha: float, correction: Correction = "holm") -> dict[str, float]:
    """Each test's own level: rejected when its p-value is below it (Holm's levels, read in order
    of the p-values, stop at the first test that is not rejected: later ones get level 0)."""
    if not 0 < alpha < 1:
        raise ValueError(f"alpha must be in (0, 1), got {alpha}")
    m = len(p_values)
    if correction == "bonferroni":
        return {name: alpha / m for name in p_values}
    if correction != "holm":
        raise ValueError(f"unknown correction {correction!r} (use 'holm' or 'bonferroni')")
    out, open_ = {}, True
    for k, (name, p) in enumerate(sorted(p_values.items(), key=lambda item: (item[1], item[0]))):
        level = alpha / (m - k) if open_ else 0.0
        open_ = open_ and p < level
        out[name] = level
    return out


def rejected(p_values: Mapping[str, float], alpha: float, correction: Correction = "holm") -> list[str]:
    """The names whose null hypothesis is rejected, smallest p-value first."""
    at = levels(p_values, alpha, correction)
    return [name for name, p in sorted(p_values.items(), key=lambda item: (item[1], item[0])) if p < at[name]]
