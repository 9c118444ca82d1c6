"""A `generate` loop's section: serve a causal LM's completions, log them, join their feedback.

The loop serves `POST <route_prefix>` (completions with their log-probabilities) and
`POST <route_prefix>/feedback` (thumbs, a reward, or a preference between two completions of one
prompt), and writes each joined completion to its `completions` replay table.  Its `prompts` are
openings of the shipped reviews (core/data/prompts.py) and its `users` simulated clients whose
feedback follows a fixed judge (core/models/judge.py).  Its `learning` group says how the
policy-gradient learner (learners/policy_gradient.py) turns that feedback into rewards and updates.
"""

from __future__ import annotations

import math
from typing import Literal

from pydantic import Field, field_validator, model_validator

from core.config.base import NAME_PATTERN, LoopSection, Section, ServedPolicy
from core.config.gate import GeneratorGateSection, generator_gate


class GenerateModelSection(Section):
    """Where the served causal LM comes from: a registry policy (a pretraining run's), else built here."""

    # A registry policy whose live (else newest) version the loop starts from; None, or a policy with
    # no version yet: a GPT-2-shaped model with random weights, shaped below, for `tokenizer`.
    start_policy: str | None = None
    # The registry holding `start_policy` (a pretraining run's: runs/clm/registry); None: this run's.
    start_registry: str | None = None
    tokenizer: str | None = None  # a tokenizer directory for a built model; None: WordPiece on the reviews
    vocab_size: int = Field(default=3000, ge=100)  # the WordPiece tokenizer trained when `tokenizer` is None
    n_layer: int = Field(default=2, ge=1)  # a built model's transformer blocks
    n_embd: int = Field(default=64, ge=8)  # a built model's width
    n_head: int = Field(default=2, ge=1)  # a built model's attention heads (n_embd a multiple of it)
    n_positions: int = Field(default=256, ge=16)  # the context: prompt + completion tokens
    seed: int = 0  # a built model's initial weights


class GenerateServingSection(Section):
    """The loop's Serve app and its request limits (a request past one is a 4xx naming the field)."""

    route_prefix: str = "/v1/generate"  # generate at the prefix itself; /feedback and /healthz under it
    num_replicas: int = Field(default=1, ge=1)  # Serve replicas of the app
    max_queued_requests: int = Field(default=200, ge=1)  # past this, 503 with Retry-After
    max_prompt_chars: int = Field(default=2000, ge=1)  # a longer prompt: 413
    max_new_tokens_limit: int = Field(default=128, ge=1)  # `max_new_tokens` above it: 422
    max_n: int = Field(default=8, ge=1)  # completions of one prompt per request
    max_temperature: float = Field(default=5.0, gt=0)  # `temperature` above it: 422
    default_max_new_tokens: int = Field(default=32, ge=1)  # a request without `max_new_tokens`
    default_temperature: float = Field(default=1.0, ge=0)  # 0: greedy
    default_top_p: float = Field(default=1.0, gt=0, le=1)  # a request without `top_p`: no nucleus cut
    # @serve.batch: requests decoded together, counted in completions (prompts x n); requests with
    # the same max_new_tokens, temperature and top_p share one generate call
    max_batch_size: int = Field(default=16, ge=1)  # completions per generate call, at most
    batch_wait_timeout_s: float = Field(default=0.02, ge=0)  # how long a batch waits to fill
    feedback_ttl_s: float = Field(default=600.0, gt=0)  # feedback after this -> 410
    max_events: int = Field(default=50_000, ge=1)  # completions held for feedback (each keeps its tokens)

    @field_validator("route_prefix")
    @classmethod
    def _route(cls, v: str) -> str:
        if not v.startswith("/") or v.endswith("/") or "//" in v:
            raise ValueError(f"a route prefix starts with '/' and does not end with one, e.g. /v1/generate; got {v!r}")
        return v

    @model_validator(mode="after")
    def _defaults_within_limits(self) -> "GenerateServingSection":
        if self.default_max_new_tokens > self.max_new_tokens_limit:
            raise ValueError(f"default_max_new_tokens {self.default_max_new_tokens} is above max_new_tokens_limit "
                             f"{self.max_new_tokens_limit}")
        if self.default_temperature > self.max_temperature:
            raise ValueError(f"default_temperature {self.default_temperature} is above max_temperature "
                             f"{self.max_temperature}")
        return self


class GenerateLearningSection(Section):
    """The policy-gradient learner of completions, and the rule that turns feedback into rewards.

    The reward rule (core/data/completion_rewards.py): a thumbs-up scores `thumbs_up_reward`, a
    thumbs-down `thumbs_down_reward`; a scalar reward passes through, clipped into
    [`reward_min`, `reward_max`]; a preference scores the chosen completion +`preference_reward` and
    the rejected one -`preference_reward`, the two compared with each other only (a group of their own).
    """

    thumbs_up_reward: float = 1.0  # a thumbs-up's reward
    thumbs_down_reward: float = 0.0  # a thumbs-down's reward
    reward_min: float = 0.0  # a scalar reward below it is raised to it
    reward_max: float = 1.0  # a scalar reward above it is lowered to it
    # a preference: the chosen completion +this, the rejected one -this (the pair is its own group)
    preference_reward: float = Field(default=0.5, gt=0)
    lr: float = Field(default=1e-4, gt=0, lt=1)  # AdamW step size
    weight_decay: float = Field(default=0.0, ge=0)  # AdamW decoupled weight decay
    grad_clip: float = Field(default=1.0, gt=0)  # global gradient norm cap
    batch_size: int = Field(default=16, ge=1)  # feedback rows per update (a preference row is two completions)
    # PPO's ratio clip: a token's ratio of the current model to the sampling version's is held to
    # [1 - clip_epsilon, 1 + clip_epsilon] where moving further would raise the objective
    clip_epsilon: float = Field(default=0.2, gt=0, lt=1)
    # dual clip: a token with a negative advantage contributes at most dual_clip x |advantage|,
    # however large its ratio (a stale sample the model now likes far more cannot blow up the step)
    dual_clip: float = Field(default=3.0, gt=1)
    kl_coef: float = Field(default=0.05, ge=0)  # weight of the exact per-token KL to the reference version
    # the reference of the KL penalty: this registry version; None: the version the learner starts from
    reference_version: int | None = Field(default=None, ge=1)
    # a prompt with several rated completions in a batch: advantages are rewards less the group's
    # mean, divided by the group's standard deviation when True (GRPO), the mean only when False
    group_std: bool = True
    baseline_init: float = 0.5  # the running reward baseline before any reward (one rated completion of a prompt)
    baseline_decay: float = Field(default=0.99, gt=0, lt=1)  # EMA decay of the running baseline, per reward
    candidate_every: int = Field(default=20, ge=1)  # learner updates between candidates
    report_every: int = Field(default=5, ge=1)  # learner updates between progress records
    checkpoint_every: int = Field(default=200, ge=1)  # learner updates between checkpoints

    @model_validator(mode="after")
    def _finite_rewards(self) -> "GenerateLearningSection":
        named = {"thumbs_up_reward": self.thumbs_up_reward, "thumbs_down_reward": self.thumbs_down_reward,
                 "reward_min": self.reward_min, "reward_max": self.reward_max, "baseline_init": self.baseline_init}
        bad = [k for k, v in named.items() if not math.isfinite(v)]
        if bad:
            raise ValueError(f"{bad[0]} must be a finite number")
        if not self.reward_min < self.reward_max:
            raise ValueError(f"reward_min {self.reward_min} must be below reward_max {self.reward_max}")
        if self.dual_clip <= 1 + self.clip_epsilon:
            raise ValueError(f"dual_clip {self.dual_clip} must be above 1 + clip_epsilon ({1 + self.clip_epsilon})")
        return self


class GeneratePromptsSection(Section):
    """The prompts: openings of the reviews the judge never saw (core/data/prompts.py), held-out or traffic."""

    opening_chars: int = Field(default=8, ge=1)  # characters of a review's opening that make a prompt
    min_rest_chars: int = Field(default=4, ge=0)  # a review gives a prompt only with this much after it
    heldout_share: float = Field(default=0.2, gt=0, lt=1)  # of the openings: the gate's, never sent as traffic
    max_heldout: int | None = Field(default=500, ge=1)  # the gate's prompts, at most


class GenerateUsersSection(Section):
    """Simulated users (actors/generate_users.py): a traffic prompt, completions, feedback by the judge.

    A user who rates gives a thumbs-up with the probability the judge reads prompt + completion as
    positive; a preference names the completion the judge scores higher.  The shares pick a
    user's kind per request; the rest of 1 are users who ask one completion and rate it."""

    num_actors: int = Field(default=1, ge=0)  # user actors, each a share of the traffic prompts
    concurrency: int = Field(default=2, ge=1)  # requests in flight per actor
    requests_per_s: float | None = Field(default=None, gt=0)  # per actor; None = as fast as served
    clients: int = Field(default=1000, ge=1)  # simulated users per actor, named in `x-evolve-client`
    several_share: float = Field(default=0.2, ge=0, le=1)  # users who rate each of `several_n` completions
    preference_share: float = Field(default=0.2, ge=0, le=1)  # users who prefer one of two completions
    reward_share: float = Field(default=0.0, ge=0, le=1)  # users who send the judge's probability as a reward
    several_n: int = Field(default=4, ge=2)  # completions a rating-several user asks for
    # how a rating-several user rates each completion: a thumb drawn with the judge's probability,
    # or that probability itself as a reward (a rating on a scale)
    several_rating: Literal["thumbs", "reward"] = "thumbs"
    max_new_tokens: int | None = Field(default=None, ge=1)  # None: the app's default
    temperature: float | None = Field(default=None, ge=0)  # None: the app's default
    judge_path: str | None = None  # the judge's file; None: <cache>/judge/ (made on first use)
    actor_num_cpus: float = Field(default=0.2, gt=0)  # Ray CPUs per user actor

    @model_validator(mode="after")
    def _shares(self) -> "GenerateUsersSection":
        total = self.several_share + self.preference_share + self.reward_share
        if total > 1 + 1e-9:
            raise ValueError(f"several_share + preference_share + reward_share is {total:g}; at most 1")
        return self


class GenerateSection(ServedPolicy, LoopSection):
    kind: Literal["generate"] = "generate"  # a served text generator whose completions' feedback is logged
    policy_id: str | None = None  # registry and Serve name of the generator; None: the loop's name
    # Replay tables by role: `completions` (joined completions with their feedback). Unset: <loop>.
    tables: dict[str, str | None] = Field(default_factory=dict)
    model: GenerateModelSection = Field(default_factory=GenerateModelSection)  # the causal LM version 1 is
    serving: GenerateServingSection = Field(default_factory=GenerateServingSection)  # its app and limits
    learning: GenerateLearningSection = Field(default_factory=GenerateLearningSection)  # rewards, updates
    prompts: GeneratePromptsSection = Field(default_factory=GeneratePromptsSection)  # held-out and traffic
    users: GenerateUsersSection = Field(default_factory=GenerateUsersSection)  # the simulated users
    # what a candidate must pass to go live: held-out reward, then the reward-hacking bounds
    gate: GeneratorGateSection = Field(default_factory=generator_gate)

    @model_validator(mode="after")
    def _names(self) -> "GenerateSection":
        for value in (self.policy_id, self.model.start_policy):
            if value is not None and not NAME_PATTERN.match(value):
                raise ValueError("a policy id is 1-64 characters of letters, digits, '_', '.', '-'")
        return self

    def routes(self) -> list[str]:
        return [self.serving.route_prefix]
