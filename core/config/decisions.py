"""A decision policy's model and exploration (core/decisions/)."""

from __future__ import annotations

from typing import Literal

from pydantic import Field, field_validator, model_validator

from core.config.base import NAME_PATTERN, LoopSection, Section, ServedPolicy
from core.config.gate import DecisionGateSection, decision_gate


class DecisionModelSection(Section):
    bits: int = Field(default=18, ge=8, le=26)  # 2**bits hashed weights
    # pairs of namespaces whose features are crossed (Vowpal Wabbit's -q), context or action ones
    interactions: list[list[str]] = []
    learning_rate: float = Field(default=0.5, gt=0)  # AdaGrad's step size
    # the regression's importance weight 1 / propensity is capped here, so a rare action's reward
    # cannot throw the weights far (each step also never moves the score past its target)
    max_importance: float = Field(default=100.0, ge=1)

    @field_validator("interactions")
    @classmethod
    def _pairs(cls, value: list[list[str]]) -> list[list[str]]:
        for pair in value:
            if len(pair) != 2:
                raise ValueError(f"an interaction is a pair of namespaces, not {pair}")
        return value


class DecisionExploreSection(Section):
    """How a served decision spreads its probability over the actions."""

    kind: Literal["epsilon", "softmax", "squarecb"] = "squarecb"  # how the served action is drawn
    epsilon: float = Field(default=0.05, ge=0, le=1)  # epsilon: the share spread evenly
    softmax_lambda: float = Field(default=10.0, gt=0)  # softmax: exp(lambda * predicted reward)
    # squarecb (inverse-gap weighting, Foster & Rakhlin 2020): gamma = scale * decisions**exponent
    gamma_scale: float = Field(default=10.0, gt=0)
    gamma_exponent: float = Field(default=0.5, ge=0, le=1)  # squarecb: how fast exploration narrows


class DecisionServingSection(Section):
    """A decision app's route, its reward rules and its limits (serving/decision_app.py)."""

    route_prefix: str = "/v1/decisions"  # the app answers <route_prefix>/<policy id>/rank and /reward
    reward_min: float = 0.0  # the declared range: a reward outside it is a 422 naming it
    reward_max: float = 1.0  # ... and its top
    # a decision whose reward has not come after reward_wait_s is stored with default_reward
    # (null: it is dropped, and the policy learns only from the decisions clients answered)
    default_reward: float | None = 0.0
    reward_wait_s: float = Field(default=60.0, gt=0)  # how long a decision waits for its reward (the join's TTL)
    max_actions: int = Field(default=1024, ge=1, le=4096)  # a rank with more is a 422 naming 'actions'
    max_body_bytes: int = Field(default=4 * 1024 * 1024, ge=1024)  # a rank body past it is a 413
    max_events: int = Field(default=200_000, ge=1)  # decisions held for their reward at once
    num_replicas: int = Field(default=1, ge=1)  # Serve replicas of the app
    max_queued_requests: int = Field(default=256, ge=-1)  # beyond these a request is a 503 (-1: no limit)

    @model_validator(mode="after")
    def _range(self) -> "DecisionServingSection":
        if not self.reward_min < self.reward_max:
            raise ValueError(f"reward_min {self.reward_min} must be below reward_max {self.reward_max}")
        if self.default_reward is not None and not self.reward_min <= self.default_reward <= self.reward_max:
            raise ValueError(f"default_reward {self.default_reward} is outside [reward_min, reward_max]")
        return self


class DecisionUsersSection(Section):
    """Simulated users of a decision app (actors/decision_users.py): a stream of core/decisions/simulate.py."""

    num_actors: int = Field(default=1, ge=0)  # user actors, each with its own seed of the stream
    actor_num_cpus: float = Field(default=0.2, gt=0)  # Ray CPUs per user actor
    stream: Literal["image_segments", "led", "rbf_drift"] = "image_segments"  # the rows the users send
    events: int = Field(default=1_000_000, ge=1)  # the stream's length; rbf_drift changes half way
    concurrency: int = Field(default=2, ge=1)  # requests in flight per actor
    requests_per_s: float | None = Field(default=50.0, gt=0)  # across all threads; None: as fast as answered
    reward_share: float = Field(default=1.0, ge=0, le=1)  # users that send the reward (the rest: the default)


class DecisionLearningSection(Section):
    batch_size: int = Field(default=64, ge=1)  # joined decisions per step
    candidate_every: int = Field(default=50, ge=1)  # steps between candidates handed to the gate
    report_every: int = Field(default=10, ge=1)  # steps between the learner's progress reports
    checkpoint_every: int = Field(default=200, ge=1)  # steps between checkpoints (a restarted learner resumes)
    sync_every: int = Field(default=20, ge=1)  # steps between averaging the workers' weights


class DecisionsSection(ServedPolicy, LoopSection):
    kind: Literal["decisions"] = "decisions"  # a served decision policy learning from its rewards
    policy_id: str | None = None  # registry and route name; None: the loop's name
    # Replay tables by role: `decisions` (joined decisions with their rewards). Unset: <loop>.
    tables: dict[str, str | None] = Field(default_factory=dict)
    # the scorer; the default crosses the simulated users' context `x` with the action `a`
    model: DecisionModelSection = Field(default_factory=lambda: DecisionModelSection(interactions=[["x", "a"]]))
    explore: DecisionExploreSection = Field(default_factory=DecisionExploreSection)  # how a decision explores
    serving: DecisionServingSection = Field(default_factory=DecisionServingSection)  # its app, rewards, limits
    learning: DecisionLearningSection = Field(default_factory=DecisionLearningSection)  # the learner
    users: DecisionUsersSection = Field(default_factory=DecisionUsersSection)  # the simulated users
    gate: DecisionGateSection = Field(default_factory=decision_gate)  # off-policy evidence on held-back decisions

    @model_validator(mode="after")
    def _names(self) -> "DecisionsSection":
        if self.policy_id is not None and not NAME_PATTERN.match(self.policy_id):
            raise ValueError("a policy id is 1-64 characters of letters, digits, '_', '.', '-'")
        return self

    def routes(self) -> list[str]:
        return [f"{self.serving.route_prefix.rstrip('/')}/{self.policy_id}"]
