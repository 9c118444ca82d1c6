"""An `rl` loop's section: DQN or tabular Q-learning on a gymnasium env.

Groups by concern: `acting` (the rollout actors), `learning` (the Q learner),
`eval` (greedy evaluation and when the loop counts as solved), `drift` and
`adapt` (a change of the env and the answer to it), `gate` and `traffic`
(versions judged on /act traffic), `experience` and `clients` (episodes the
policy's own clients play through its API).
"""

from __future__ import annotations

from typing import Any, Literal

from pydantic import Field, model_validator

from core.adapt.rl_controller import RLAdaptSection
from core.config.base import NAME_PATTERN, LoopSection, Section
from core.config.gate import RLGateSection, rl_gate
from core.config.rl_clients import ClientEpisodesSection
from core.config.rl_drift import DriftSection
from core.config.rl_gate import ActTrafficSection

POLICIES_PREFIX = "/v1/policies"  # an RL loop answers POST <prefix>/<policy id>/act


class EpsilonSection(Section):
    """Linear decay over env steps of one actor, then constant."""

    start: float = Field(default=1.0, ge=0, le=1)  # epsilon at the first vector step
    end: float = Field(default=0.05, ge=0, le=1)  # ... and from decay_steps on
    decay_steps: int = Field(default=10_000, ge=1)  # vector steps of one actor from start to end

    def at(self, step: int) -> float:
        frac = min(step / self.decay_steps, 1.0)
        return self.start + frac * (self.end - self.start)


class RLActingSection(Section):
    """The rollout actors: each runs one gymnasium vector env and writes its transitions to replay."""

    num_actors: int = Field(default=1, ge=1)  # rollout actors
    num_envs: int = Field(default=8, ge=1)  # per actor: one gymnasium vector env
    steps_per_write: int = Field(default=16, ge=1)  # vector steps per replay add (the most, when adaptive)
    # Set: adds shrink toward this many vector steps while the replay rate limiter holds them
    # back, so rows stay close to the policy that acted them (actors.rollout.WriteSize).
    min_steps_per_write: int | None = Field(default=None, ge=1)
    epsilon: EpsilonSection = Field(default_factory=EpsilonSection)  # exploration of the actors
    actor_num_cpus: float = Field(default=0.5, gt=0)  # Ray CPUs per rollout actor

    @model_validator(mode="after")
    def _writes(self) -> "RLActingSection":
        if self.min_steps_per_write is not None and self.min_steps_per_write > self.steps_per_write:
            raise ValueError("min_steps_per_write must be <= steps_per_write")
        return self


class RLLearningSection(Section):
    """The Q learner on Ray Train: its updates, and how often it publishes and checkpoints."""

    lr: float = Field(default=1e-3, gt=0, lt=1)  # Adam step size (DQN)
    batch_size: int = Field(default=64, ge=1)  # transitions per update
    gamma: float = Field(default=0.99, gt=0, le=1)  # discount
    n_step: int = Field(default=1, ge=1, le=20)  # rewards summed before bootstrapping
    double_q: bool = True  # the online net picks the bootstrap action, the target net scores it
    huber_delta: float = Field(default=1.0, gt=0)  # TD error beyond which the loss is linear
    target_update_every: int = Field(default=250, ge=1)  # learner updates between target syncs
    grad_clip: float = Field(default=10.0, gt=0)  # global gradient norm cap
    qtable_alpha: float = Field(default=0.5, gt=0, le=1)  # tabular step size
    updates_per_report: int = Field(default=50, ge=1)  # learner updates between progress records
    publish_every: int = Field(default=100, ge=1)  # learner updates between published versions
    checkpoint_every: int = Field(default=500, ge=1)  # learner updates between checkpoints
    max_updates: int | None = Field(default=None, ge=1)  # the learner stops here; None = the run's budget


class RLEvalSection(Section):
    """Greedy evaluation of every published version, and when the loop counts as solved."""

    episodes: int = Field(default=10, ge=1)  # greedy episodes per published version
    # A version whose eval reaches solve_return is played again for this many episodes; only a
    # mean at the threshold over those counts as solved (a 10-episode mean is too noisy to stop on).
    confirm_episodes: int = Field(default=100, ge=1)
    solve_return: float | None = None  # None: the env's reward_threshold
    stop_when_solved: bool = True  # end the run once solved (confirmed); with a drift, see drift.stop_when_recovered


class RLSection(LoopSection):
    """One RL loop: DQN or tabular Q-learning on a gymnasium env, judged by greedy evaluation."""

    kind: Literal["rl"] = "rl"  # a Q policy learning from its actors' episodes
    policy_id: str | None = None  # registry and Serve name of the policy; None: the loop's name
    env_id: str = "CartPole-v1"  # any gymnasium id
    algo: Literal["dqn", "qtable"] = "dqn"  # DQN on an MLP, or the tabular Q-learning rule
    hidden: list[int] = Field(default_factory=lambda: [128, 128])  # Q-network layer widths
    # Replay tables by role: `transitions` (what the actors write and the learner samples).
    # Unset: named after the loop.
    tables: dict[str, str | None] = Field(default_factory=dict)
    seed: int = 0  # the actors', evaluator's and learner's seeds derive from it
    acting: RLActingSection = Field(default_factory=RLActingSection)  # the rollout actors
    learning: RLLearningSection = Field(default_factory=RLLearningSection)  # the Q learner
    eval: RLEvalSection = Field(default_factory=RLEvalSection)  # greedy evaluation and the solve
    # a change of the env's physics during the run, and the adaptive layer's answer to it
    drift: DriftSection = Field(default_factory=DriftSection)
    adapt: RLAdaptSection = Field(default_factory=RLAdaptSection)  # what an alarm of the returns detector changes
    # the publish gate on /act traffic (core/config/gate.py, an RL policy's values); no stages: every
    # version goes live
    gate: RLGateSection = Field(default_factory=rl_gate)
    traffic: ActTrafficSection = Field(default_factory=ActTrafficSection)  # simulated clients of /act
    # where the learner's experience comes from: the rollout actors, the policy's own clients (episodes
    # through its API, docs/client-rl.md), or both
    experience: Literal["rollouts", "clients", "both"] = "rollouts"
    clients: ClientEpisodesSection = Field(default_factory=ClientEpisodesSection)  # client episodes

    @model_validator(mode="after")
    def _names(self) -> "RLSection":
        if self.policy_id is not None and not NAME_PATTERN.match(self.policy_id):
            raise ValueError("policy_id must be letters, digits, '_', '.', '-'")
        if any(h < 1 for h in self.hidden):
            raise ValueError("hidden layer sizes must be >= 1")
        if self.experience == "clients" and self.drift.enabled:
            raise ValueError("drift changes the rollout actors' env: it needs experience rollouts or both")
        return self

    @property
    def table(self) -> str:
        """The transitions table (named after the loop by the run; a section outside a run: `transitions`)."""
        return self.tables.get("transitions") or "transitions"

    def check_in_run(self, name: str, cfg: Any) -> None:
        if self.experience != "rollouts" and not cfg.serving.enabled:
            raise ValueError(f"loops.{name}.experience {self.experience!r} needs serving.enabled: true (clients "
                             "play episodes through the policy's API); with serving off it is rollouts")

    def published(self, loops: dict[str, "LoopSection"]) -> list[str]:
        return [self.policy_id] if self.policy_id else []

    def routes(self) -> list[str]:
        return [f"{POLICIES_PREFIX}/{self.policy_id}"] if self.policy_id else []
