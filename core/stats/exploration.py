"""Exploration at serving time: which action a request is answered with, and the probability it had.

    model scores [N, K] (class probabilities, or Q-values)
        -> serving distribution [N, K]   none: one-hot argmax
                                          epsilon: 1 - eps on the argmax, eps spread evenly over all K
                                          softmax: softmax(scores / temperature) (log-probabilities for a
                                                   classifier, so temperature 1 samples the model's own belief)
        -> served action ~ that distribution, its probability logged as the event's `propensity`

Logged propensities are what makes counterfactual evaluation possible
(core/stats/ope.py): a later policy's value is estimated from the answers this
one gave, reweighted by how likely each was.  A greedy server (`none`)
logs propensity 1: only a candidate that agrees with it can be evaluated on
its rows by importance weighting.

`serving.exploration` sets it for every policy; `serving.exploration_by_policy`
overrides it per policy id.  A bare kind is accepted (`--set
serving.exploration=softmax`).
"""

from __future__ import annotations

from typing import Any, Literal

import numpy as np
from pydantic import Field, model_validator

from core.config.base import Section


class ExplorationSection(Section):
    kind: Literal["none", "epsilon", "softmax"] = "none"  # none: greedy; epsilon or softmax: explore
    epsilon: float = Field(default=0.1, ge=0, le=1)  # kind epsilon: share of uniformly random answers
    temperature: float = Field(default=1.0, gt=0)  # kind softmax: > 1 flatter, < 1 closer to greedy
    # Floor under every action's serving probability (softmax): keeps importance weights bounded.
    min_propensity: float = Field(default=0.0, ge=0, lt=0.5)

    @model_validator(mode="before")
    @classmethod
    def _bare_kind(cls, value: Any) -> Any:
        return {"kind": value} if isinstance(value, str) else value


def serving_distribution(scores: np.ndarray, cfg: ExplorationSection, log_probs: bool = True) -> np.ndarray:
    """[N, K] rows summing to 1.  `scores` are class probabilities (`log_probs`: their logs are
    the softmax's logits) or Q-values (`log_probs=False`)."""
    scores = np.asarray(scores, dtype=np.float64)
    n, k = scores.shape
    greedy = np.zeros((n, k))
    greedy[np.arange(n), scores.argmax(1)] = 1.0
    if cfg.kind == "none" or k == 1:
        return greedy
    if cfg.kind == "epsilon":
        return (1.0 - cfg.epsilon) * greedy + cfg.epsilon / k
    logits = np.log(np.clip(scores, 1e-12, None)) if log_probs else scores
    z = logits / cfg.temperature
    z = np.exp(z - z.max(1, keepdims=True))
    dist = z / z.sum(1, keepdims=True)
    if cfg.min_propensity > 0:
        dist = np.maximum(dist, cfg.min_propensity)
        dist /= dist.sum(1, keepdims=True)
    return dist


def choose(dist: np.ndarray, rng: np.random.Generator) -> tuple[np.ndarray, np.ndarray]:
    """(actions [N], their propensities [N]): one draw per row of a serving distribution."""
    dist = np.asarray(dist, dtype=np.float64)
    u = rng.random(len(dist))[:, None]
    actions = np.minimum((dist.cumsum(1) < u).sum(1), dist.shape[1] - 1)
    return actions, dist[np.arange(len(dist)), actions]
