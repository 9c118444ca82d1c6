"""The hashed linear scorer of a decision policy: predicted reward = sum of the features' weights.

It learns by importance-weighted regression on the action that was served (the reduction
Vowpal Wabbit's `cb_explore_adf` uses by default, `mtr`): the served action's prediction moves
toward its reward with weight 1 / propensity (capped at `max_importance`), so the actions a
policy rarely serves count for what they stand for.  AdaGrad gives each weight its own step.
A step never moves the prediction past its target (as VW's importance-invariant update), so a
large importance weight cannot throw the weights around.
"""

from __future__ import annotations

import numpy as np

from core.config.decisions import DecisionModelSection
from core.decisions.features import Encoded


class LinearScorer:
    def __init__(self, cfg: DecisionModelSection):
        self.cfg = cfg
        self.weights = np.zeros(1 << cfg.bits, np.float32)
        self.squares = np.zeros(1 << cfg.bits, np.float32)  # AdaGrad's sum of squared gradients
        self.updates = 0

    def predict(self, enc: Encoded) -> np.ndarray:
        """[K] predicted reward of each action."""
        contrib = self.weights[enc.index] * enc.value
        sums = np.add.reduceat(contrib, enc.offsets[:-1]) if len(contrib) else np.zeros(enc.actions)
        return np.where(np.diff(enc.offsets) > 0, sums, 0.0).astype(np.float64)

    def learn(self, enc: Encoded, action: int, reward: float, propensity: float) -> float:
        """One regression step on the served action; the squared error before it."""
        index, value = enc.of(action)
        index, inverse = np.unique(index, return_inverse=True)  # a bucket two features share adds up
        value = np.bincount(inverse, weights=value, minlength=len(index)).astype(np.float32)
        error = float(self.weights[index] @ value) - reward
        importance = min(1.0 / max(propensity, 1e-12), self.cfg.max_importance)
        grad = importance * error * value
        self.squares[index] += grad * grad
        scale = 1.0 / np.sqrt(self.squares[index] + 1e-12)
        step = self.cfg.learning_rate * importance * scale
        moved = float(step @ (value * value))  # how far one unit of error moves the prediction
        if moved > 1.0:
            step /= moved
        self.weights[index] -= step * error * value
        self.updates += 1
        return error * error

    def state(self) -> dict[str, np.ndarray]:
        return {"weights": self.weights, "squares": self.squares,
                "updates": np.array([self.updates], np.int64)}

    def load(self, state: dict[str, np.ndarray]) -> None:
        if state["weights"].shape != self.weights.shape:
            raise ValueError(f"weights of {state['weights'].shape[0]} buckets, this scorer has {len(self.weights)}")
        self.weights = np.asarray(state["weights"], np.float32).copy()
        self.squares = np.asarray(state["squares"], np.float32).copy()
        self.updates = int(state["updates"][0])
