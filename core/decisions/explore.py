"""A served decision's distribution over its actions, from the scorer's predicted rewards.

    epsilon   1 - eps on the best action, eps spread evenly
    softmax   exp(lambda * reward), normalised
    squarecb  inverse-gap weighting: each other action 1 / (K + gamma * (best - its reward)), the
              best the rest; gamma = gamma_scale * t**gamma_exponent grows with the decisions
              made, so exploration narrows as the estimates firm up (Vowpal Wabbit's defaults)

Ties at the top share the best action's mass, so a fresh policy explores evenly.
"""

from __future__ import annotations

import numpy as np

from core.config.decisions import DecisionExploreSection


def distribution(predicted: np.ndarray, cfg: DecisionExploreSection, decisions: int = 0) -> np.ndarray:
    r = np.asarray(predicted, np.float64)
    k = len(r)
    best = np.flatnonzero(r >= r.max() - 1e-12)
    if cfg.kind == "softmax":
        z = np.exp(cfg.softmax_lambda * (r - r.max()))
        return z / z.sum()
    p = np.zeros(k)
    if cfg.kind == "epsilon":
        p[best] = (1.0 - cfg.epsilon) / len(best)
        return p + cfg.epsilon / k
    gamma = cfg.gamma_scale * max(decisions, 1) ** cfg.gamma_exponent
    p = 1.0 / (k + gamma * (r.max() - r))
    p[best] = 0.0
    p[best] = (1.0 - p.sum()) / len(best)
    return p


def choose(p: np.ndarray, rng: np.random.Generator) -> int:
    return int(min(np.searchsorted(np.cumsum(p), rng.random(), side="right"), len(p) - 1))
