"""Q models built from an env's spaces: an MLP for Box observations, a table for Discrete ones.

A `PolicySpec` is everything needed to rebuild the model from registry
weights, so rollout actors, the evaluator and Serve replicas all act with the
exact network the learner trained.
"""

from __future__ import annotations

from dataclasses import asdict, dataclass
from typing import Any

import gymnasium as gym
import numpy as np
import torch
from torch import nn


@dataclass(frozen=True)
class PolicySpec:
    kind: str  # "dqn" | "qtable"
    obs_dim: int  # Box: flat size; Discrete: number of states
    n_actions: int
    hidden: tuple[int, ...] = ()
    discrete_obs: bool = False

    def to_dict(self) -> dict[str, Any]:
        return {**asdict(self), "hidden": list(self.hidden)}

    @classmethod
    def from_dict(cls, d: dict[str, Any]) -> "PolicySpec":
        return cls(**{**d, "hidden": tuple(d.get("hidden", ()))})


def spec_for_env(env_id: str, algo: str, hidden: list[int] | tuple[int, ...] = ()) -> PolicySpec:
    env = gym.make(env_id)
    try:
        obs_space, act_space = env.observation_space, env.action_space
    finally:
        env.close()
    if not isinstance(act_space, gym.spaces.Discrete):
        raise ValueError(f"{env_id}: action space {act_space} is not Discrete; Evolve's Q-learners need discrete actions")
    if isinstance(obs_space, gym.spaces.Discrete):
        return PolicySpec(algo, int(obs_space.n), int(act_space.n), tuple(hidden), discrete_obs=True)
    if isinstance(obs_space, gym.spaces.Box):
        if algo == "qtable":
            raise ValueError(f"{env_id}: tabular Q-learning needs a Discrete observation space, got {obs_space}")
        return PolicySpec(algo, int(np.prod(obs_space.shape)), int(act_space.n), tuple(hidden))
    raise ValueError(f"{env_id}: observation space {obs_space} is neither Box nor Discrete")


def obs_width(spec: PolicySpec) -> int:
    """Width of the stored observation vector (a Discrete state is stored as one float)."""
    return 1 if spec.discrete_obs else spec.obs_dim


class QNetwork(nn.Module):
    """obs [B, obs_dim] -> Q [B, n_actions]; Discrete states are one-hot encoded first."""

    def __init__(self, spec: PolicySpec):
        super().__init__()
        self.spec = spec
        layers: list[nn.Module] = []
        width = spec.obs_dim
        for h in spec.hidden:
            layers += [nn.Linear(width, h), nn.ReLU()]
            width = h
        layers.append(nn.Linear(width, spec.n_actions))
        self.net = nn.Sequential(*layers)

    def forward(self, obs: torch.Tensor) -> torch.Tensor:
        if self.spec.discrete_obs:
            obs = nn.functional.one_hot(obs.reshape(-1).long(), self.spec.obs_dim).float()
        return self.net(obs)


class QTable(nn.Module):
    """Tabular Q: a [n_states, n_actions] table, updated in place (no gradients)."""

    def __init__(self, spec: PolicySpec):
        super().__init__()
        if not spec.discrete_obs:
            raise ValueError("QTable needs a Discrete observation space")
        self.spec = spec
        self.q = nn.Parameter(torch.zeros(spec.obs_dim, spec.n_actions), requires_grad=False)

    def forward(self, obs: torch.Tensor) -> torch.Tensor:
        return self.q[obs.reshape(-1).long()]


def build_model(spec: PolicySpec) -> nn.Module:
    return QTable(spec) if spec.kind == "qtable" else QNetwork(spec)
