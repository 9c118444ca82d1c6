"""The `rl` section: one RL loop (DQN or tabular Q-learning on a gymnasium env)."""

from __future__ import annotations

from typing import Literal

from pydantic import Field, model_validator

from core.config_base import NAME_PATTERN, Section


class EpsilonSchedule(Section):
    """Linear decay over env steps of one actor, then constant."""

    start: float = Field(default=1.0, ge=0, le=1)
    end: float = Field(default=0.05, ge=0, le=1)
    decay_steps: int = Field(default=10_000, ge=1)

    def at(self, step: int) -> float:
        frac = min(step / self.decay_steps, 1.0)
        return self.start + frac * (self.end - self.start)


class RLConfig(Section):
    name: str = "cartpole"  # the loop's name in events and summary.json
    env_id: str = "CartPole-v1"
    algo: Literal["dqn", "qtable"] = "dqn"
    policy_id: str = "cartpole"
    table: str = "transitions"  # replay table the actors write and learners sample
    # acting
    num_actors: int = Field(default=1, ge=1)
    num_envs: int = Field(default=8, ge=1)  # per actor: one gymnasium vector env
    steps_per_write: int = Field(default=16, ge=1)  # vector steps per replay add (the most, when adaptive)
    # Set: adds shrink toward this many vector steps while the replay store holds them back
    # (its rate limiter pacing the actor), so rows stay close to the policy that acted them,
    # and grow back to steps_per_write when adds return quickly (see actors.rollout.WriteSize).
    min_steps_per_write: int | None = Field(default=None, ge=1)
    epsilon: EpsilonSchedule = Field(default_factory=EpsilonSchedule)
    actor_num_cpus: float = Field(default=0.5, gt=0)
    # learning
    gamma: float = Field(default=0.99, gt=0, le=1)
    n_step: int = Field(default=1, ge=1, le=20)
    hidden: list[int] = Field(default_factory=lambda: [128, 128])
    double_q: bool = True
    huber_delta: float = Field(default=1.0, gt=0)
    target_update_every: int = Field(default=250, ge=1)  # learner updates between target syncs
    grad_clip: float = Field(default=10.0, gt=0)
    qtable_alpha: float = Field(default=0.5, gt=0, le=1)  # tabular step size
    updates_per_report: int = Field(default=50, ge=1)
    publish_every: int = Field(default=100, ge=1)  # learner updates between published versions
    max_updates: int | None = Field(default=None, ge=1)
    # judging
    eval_episodes: int = Field(default=10, ge=1)
    solve_return: float | None = None  # None: the env's reward_threshold
    stop_when_solved: bool = True
    seed: int = 0

    @model_validator(mode="after")
    def _names(self) -> "RLConfig":
        for key in ("name", "policy_id", "table"):
            if not NAME_PATTERN.match(getattr(self, key)):
                raise ValueError(f"{key} must be letters, digits, '_', '.', '-'")
        if self.min_steps_per_write is not None and self.min_steps_per_write > self.steps_per_write:
            raise ValueError("min_steps_per_write must be <= steps_per_write")
        if any(h < 1 for h in self.hidden):
            raise ValueError("hidden layer sizes must be >= 1")
        return self
