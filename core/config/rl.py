"""The `rl` section: one RL loop (DQN or tabular Q-learning on a gymnasium env)."""

from __future__ import annotations

from typing import Literal

from pydantic import Field, model_validator

from core.adapt.rl_controller import RLAdaptSection
from core.config.base import NAME_PATTERN, Section
from core.config.rl_drift import DriftConfig
from core.config.gate import RLGateSection, rl_gate
from core.config.rl_gate import ActTrafficSection


class EpsilonSchedule(Section):
    """Linear decay over env steps of one actor, then constant."""

    start: float = Field(default=1.0, ge=0, le=1)
    end: float = Field(default=0.05, ge=0, le=1)
    decay_steps: int = Field(default=10_000, ge=1)

    def at(self, step: int) -> float:
        frac = min(step / self.decay_steps, 1.0)
        return self.start + frac * (self.end - self.start)


class RLConfig(Section):
    """One RL loop: DQN or tabular Q-learning on a gymnasium env, judged by greedy evaluation."""

    name: str = "cartpole"  # the loop's name in events and summary.json
    env_id: str = "CartPole-v1"  # any gymnasium id
    algo: Literal["dqn", "qtable"] = "dqn"
    policy_id: str = "cartpole"  # registry and Serve name of the policy
    table: str = "transitions"  # replay table the actors write and the learner samples
    # acting
    num_actors: int = Field(default=1, ge=1)  # rollout actors
    num_envs: int = Field(default=8, ge=1)  # per actor: one gymnasium vector env
    steps_per_write: int = Field(default=16, ge=1)  # vector steps per replay add (the most, when adaptive)
    # Set: adds shrink toward this many vector steps while the replay rate limiter holds them
    # back, so rows stay close to the policy that acted them (actors.rollout.WriteSize).
    min_steps_per_write: int | None = Field(default=None, ge=1)
    epsilon: EpsilonSchedule = Field(default_factory=EpsilonSchedule)  # exploration of the actors
    actor_num_cpus: float = Field(default=0.5, gt=0)  # Ray CPUs per rollout actor
    # learning
    lr: float = Field(default=1e-3, gt=0, lt=1)  # Adam step size (DQN)
    batch_size: int = Field(default=64, ge=1)  # transitions per update
    gamma: float = Field(default=0.99, gt=0, le=1)  # discount
    n_step: int = Field(default=1, ge=1, le=20)  # rewards summed before bootstrapping
    hidden: list[int] = Field(default_factory=lambda: [128, 128])  # Q-network layer widths
    double_q: bool = True  # the online net picks the bootstrap action, the target net scores it
    huber_delta: float = Field(default=1.0, gt=0)  # TD error beyond which the loss is linear
    target_update_every: int = Field(default=250, ge=1)  # learner updates between target syncs
    grad_clip: float = Field(default=10.0, gt=0)  # global gradient norm cap
    qtable_alpha: float = Field(default=0.5, gt=0, le=1)  # tabular step size
    updates_per_report: int = Field(default=50, ge=1)  # learner updates between progress records
    publish_every: int = Field(default=100, ge=1)  # learner updates between published versions
    checkpoint_every: int = Field(default=500, ge=1)  # learner updates between checkpoints
    max_updates: int | None = Field(default=None, ge=1)  # the learner stops here; None = the run's budget
    # judging
    eval_episodes: int = Field(default=10, ge=1)  # greedy episodes per published version
    # A version whose eval reaches solve_return is played again for this many episodes; only a
    # mean at the threshold over those counts as solved (a 10-episode mean is too noisy to stop on).
    confirm_episodes: int = Field(default=100, ge=1)
    solve_return: float | None = None  # None: the env's reward_threshold
    stop_when_solved: bool = True  # end the run once solved (confirmed); with a drift, see drift.stop_when_recovered
    seed: int = 0
    # a change of the env's physics during the run, and the adaptive layer's answer to it
    drift: DriftConfig = Field(default_factory=DriftConfig)
    adapt: RLAdaptSection = Field(default_factory=RLAdaptSection)
    # the publish gate on /act traffic (core/config/gate.py, an RL policy's values); no stages: every
    # version goes live
    gate: RLGateSection = Field(default_factory=rl_gate)
    traffic: ActTrafficSection = Field(default_factory=ActTrafficSection)

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
