"""The acting side of a Q policy: epsilon-greedy actions from a model rebuilt from weights."""

from __future__ import annotations

from typing import Any, Mapping

import numpy as np
import torch

from core.models.q import PolicySpec, build_model


class QPolicy:
    """CPU inference for rollouts, evaluation and serving; swaps weights in place."""

    def __init__(self, spec: PolicySpec, weights: Mapping[str, Any] | None = None, version: int = 0):
        self.spec = spec
        self.model = build_model(spec).eval()
        self.version = version
        if weights is not None:
            self.load(weights, version)

    def load(self, weights: Mapping[str, Any], version: int) -> None:
        state = {k: torch.as_tensor(v) for k, v in weights.items()}
        self.model.load_state_dict(state, strict=True)
        self.version = version

    @torch.no_grad()
    def q_values(self, obs: np.ndarray) -> np.ndarray:
        x = torch.as_tensor(np.asarray(obs, dtype=np.float32)).reshape(len(obs), -1)
        return self.model(x).numpy()

    @torch.no_grad()
    def fault(self) -> str | None:
        """Why this version cannot answer at all, else None: a non-finite weight, or non-finite
        Q-values on an all-zero observation (weights so large that any input overflows)."""
        bad = nonfinite_weights(self.model.state_dict())
        if bad is not None:
            return bad
        zero = np.zeros((1, 1 if self.spec.discrete_obs else self.spec.obs_dim), dtype=np.float32)
        if not np.isfinite(self.q_values(zero)).all():
            return "its Q-values on an all-zero observation are not finite"
        return None

    def act(self, obs: np.ndarray, epsilon: float = 0.0, rng: np.random.Generator | None = None) -> tuple[np.ndarray, np.ndarray]:
        """(actions [B], q-values [B, A]); with probability epsilon an action is random."""
        q = self.q_values(obs)
        actions = q.argmax(axis=1)
        if epsilon > 0:
            rng = rng or np.random.default_rng()
            explore = rng.random(len(actions)) < epsilon
            actions = np.where(explore, rng.integers(0, self.spec.n_actions, len(actions)), actions)
        return actions.astype(np.int64), q


def nonfinite_weights(weights: Mapping[str, Any]) -> str | None:
    """The first weight tensor holding NaN or inf, said in a few words; None when all are finite."""
    for name, value in weights.items():
        tensor = torch.as_tensor(value)
        if tensor.is_floating_point() and not bool(torch.isfinite(tensor).all()):
            return f"non-finite weights in {name!r}"
    return None
