"""The acting side of a Q policy: epsilon-greedy actions from a model rebuilt from weights."""

from __future__ import annotations

from typing import Any, Mapping

import numpy as np
import torch

from core.rl.models import PolicySpec, build_model


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

    def act(self, obs: np.ndarray, epsilon: float = 0.0, rng: np.random.Generator | None = None) -> tuple[np.ndarray, np.ndarray]:
        """(actions [B], q-values [B, A]); with probability epsilon an action is random."""
        q = self.q_values(obs)
        actions = q.argmax(axis=1)
        if epsilon > 0:
            rng = rng or np.random.default_rng()
            explore = rng.random(len(actions)) < epsilon
            actions = np.where(explore, rng.integers(0, self.spec.n_actions, len(actions)), actions)
        return actions.astype(np.int64), q
