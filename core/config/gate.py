"""`gate`: the publish gate's section, one shape for every policy kind.

    stages     in order; a candidate refused by one never reaches the next.  The built-in ones
               (gate/stages/):
                 heldout  the paired test on the kind's fixed held-out set (a text classifier has one)
                 ope      the candidate's off-policy estimate on logged live decisions against live's
                 shadow   it also answers a share of live requests, judged on their feedback
                 canary   it answers a share of live traffic until a sequential test decides
                 bounds   a generator's reward-hacking bounds: KL to a reference, repetition, length
                 groups   per-group non-regression: no group of the data seen so far lost beyond
                          `groups.tolerance` (with a group column; Holm or Bonferroni over the groups)
               A stage on live traffic comes after the others.  A stage registered anywhere else
               (gate/stage.py `register_stage`) is named the same way, and its settings are the
               section under its name (`gate.<name>`), which the gate package checks.
    statistics `test`, `tolerance`, `alpha`, ... shared by the stages
    guard      the rollback guard on live (every kind): `window`, `rollback_min_rows`,
               `rollback_margin`, `min_clients`, `max_client_share`
    samples    a generator's held-out completions (what its `heldout` and `bounds` stages read)

A text classifier's gate is this class's defaults; an RL policy's (`rl_gate()`) differ only in
values: no stages, a tolerance on the [0, 1] return scale, and an OPE slice and a canary counted
in episodes (a canary's "request" is one episode, an OPE "row" one logged episode).  A
generator's (`generator_gate()`): `[heldout, bounds]`, held-out scores that are mean rewards
(the paired bootstrap), and an OPE slice of whole completions.
"""

from __future__ import annotations

from typing import Annotated, Any, Literal

from pydantic import BeforeValidator, ConfigDict, Field, field_validator, model_validator

from core.config.base import Section


class OPESection(Section):
    """The `ope` stage: logged live decisions, never trained on, evaluate candidates counterfactually
    (core/stats/ope.py); meaningful when serving explores (serving.exploration)."""

    # A text classifier's share of joined feedback held out of training for it (by a hash of the
    # event id); an RL policy's `/act` episodes never enter replay, so every one counts.
    fraction: float = Field(default=0.1, gt=0, lt=1)
    method: Literal["ips", "snips", "dr"] = "dr"  # a text classifier's estimator (an RL policy's is per-decision IS)
    size: int = Field(default=3000, ge=1)  # newest logged rows (episodes) kept
    min_rows: int = Field(default=300, ge=1)  # fewer: a candidate is refused for lack of evidence
    # Fewer effective rows (episodes) than this: the estimate is inconclusive and the candidate
    # passes to the next stage (importance weights over long episodes collapse onto a few).
    min_ess: float = Field(default=0.0, ge=0)
    # `observed`: refuse when the interval on candidate - live lies below -tolerance, or the observed
    # difference does; `interval`: only the interval counts (an estimate too noisy to act on alone).
    rule: Literal["observed", "interval"] = "observed"
    level: float = Field(default=0.95, gt=0.5, lt=1)  # of the bootstrap interval
    bootstrap_samples: int = Field(default=500, ge=0)  # resamples of the interval (0: none, the estimate alone)
    # A generator's importance weight of a whole completion above this counts as this (None: uncut):
    # a sequence's ratio is a product over its tokens, and one huge weight would be the estimate.
    max_weight: float | None = Field(default=None, gt=1)


class ShadowSection(Section):
    """The `shadow` stage: the candidate also answers a share of live requests (clients get live's
    answer); its answers, joined with the feedback, are judged against live's off-policy."""

    fraction: float = Field(default=0.5, gt=0, le=1)  # of predict requests, drawn per request
    min_rows: int = Field(default=300, ge=10)  # joined feedbacks with a shadow answer before it decides
    # A shadow that gathers fewer rows in this long is refused for lack of evidence, so a quiet
    # endpoint never holds the gate (newer candidates are dropped while a shadow runs).
    max_s: float = Field(default=1800.0, gt=0)
    method: Literal["ips", "snips", "dr"] = "dr"  # the off-policy estimator (core/stats/ope.py)
    level: float = Field(default=0.95, gt=0.5, lt=1)  # of the bootstrap interval on candidate - live
    bootstrap_samples: int = Field(default=500, ge=50)  # resamples of the interval


class CanarySection(Section):
    """The `canary` stage: a share of live traffic answered by the candidate, judged by an
    always-valid sequential test on each unit's score (core/stats/sequential.py): a joined
    feedback's reward, or an episode's return on the [0, 1] scale."""

    fraction: float = Field(default=0.2, gt=0, lt=1)  # of clients, sticky per client key
    max_requests: int = Field(default=500, ge=2)  # the candidate's exposure cap (feedbacks / episodes)
    min_requests: int = Field(default=30, ge=2)  # the candidate's units before any decision
    alpha: float = Field(default=0.05, gt=0, lt=1)  # error rate of the sequential test
    n_opt: int = Field(default=500, ge=1)  # where the confidence sequence is tightest

    @model_validator(mode="after")
    def _bounds(self) -> "CanarySection":
        if self.min_requests > self.max_requests:
            raise ValueError("canary.min_requests must be <= max_requests")
        return self


class BoundsSection(Section):
    """The `bounds` stage: a generator whose held-out completions move past any bound is refused,
    whatever their reward (gate/stages/bounds.py, core/stats/reward_hacking.py); None: no such bound."""

    max_kl: float | None = Field(default=0.5, gt=0)  # mean per-token KL to the reference version (nats)
    max_repetition: float | None = Field(default=0.5, gt=0, le=1)  # share of n-grams repeated within a completion
    repetition_n: int = Field(default=3, ge=1)  # the n of those n-grams (of token ids)
    max_length: float | None = Field(default=None, gt=0)  # mean tokens of a completion
    min_length: float | None = Field(default=None, ge=0)  # mean tokens of a completion, at least
    reference_version: int | None = Field(default=None, ge=1)  # the KL's reference; None: the run's first live version

    @model_validator(mode="after")
    def _lengths(self) -> "BoundsSection":
        if self.min_length is not None and self.max_length is not None and self.min_length > self.max_length:
            raise ValueError("bounds.min_length must be <= max_length")
        return self


class GroupsSection(Section):
    """The `groups` stage: per group of the data (`data.group_column`) seen in live traffic so far,
    the candidate against live on that group's held-out rows (the fixed set's, and the newest held-out
    feedback of the group), by the gate's paired test; refused when any group lost more than
    `tolerance`, the family of tests held at `alpha` (gate/stages/groups.py)."""

    tolerance: float = Field(default=0.02, ge=0, lt=1)  # accuracy a candidate may lose to live on one group
    alpha: float = Field(default=0.05, gt=0, lt=1)  # family-wise error over the groups judged
    correction: Literal["holm", "bonferroni"] = "holm"  # how the groups' p-values share alpha
    min_rows: int = Field(default=50, ge=5)  # a group is judged once its slice has this many rows
    # Held-out feedback (the recent slice's rows) kept per group beside the fixed set's rows: a
    # group the fixed set lacks enters the stage as its feedback arrives.
    feedback_rows: int = Field(default=200, ge=0)


class SamplesSection(Section):
    """A generator's held-out evidence: each version's completions of every held-out prompt, drawn
    alike (one seed) and scored by the loop's reward; the `bounds` stage reads the same ones."""

    n: int = Field(default=4, ge=1)  # completions per held-out prompt
    max_new_tokens: int = Field(default=32, ge=1)  # of each completion
    temperature: float = Field(default=1.0, gt=0)  # 1 (with top_p 1): the KL bound's estimate is unbiased
    top_p: float = Field(default=1.0, gt=0, le=1)  # the nucleus the completions are drawn from
    seed: int = 0  # the same for every version: each draws from the same random stream


class GateSection(Section):
    """A candidate goes live only if each of the gate's stages says it is not worse than live."""

    # Sections of stages registered outside the built-in ones (`gate.<stage name>`): the gate
    # package validates each against its stage's settings, and refuses a key that names none.
    model_config = ConfigDict(extra="allow", validate_assignment=True)

    stages: list[str] = Field(default_factory=lambda: ["heldout"])  # in order; none: every version goes live
    ope: OPESection = Field(default_factory=OPESection)  # the `ope` stage's settings
    shadow: ShadowSection = Field(default_factory=ShadowSection)  # the `shadow` stage's settings
    canary: CanarySection = Field(default_factory=CanarySection)  # the `canary` stage's settings
    bounds: BoundsSection = Field(default_factory=BoundsSection)  # the `bounds` stage's (a generator's)
    groups: GroupsSection = Field(default_factory=GroupsSection)  # the `groups` stage's (needs a group column)
    samples: SamplesSection = Field(default_factory=SamplesSection)  # a generator's held-out completions
    test: Literal["mcnemar", "bootstrap"] = "mcnemar"  # the held-out stage's paired test (core/stats/paired.py)
    # points a candidate may lose to live: accuracy for a text classifier, the [0, 1] return scale for RL
    tolerance: float = Field(default=0.01, ge=0, lt=1)
    alpha: float = Field(default=0.05, gt=0, lt=1)  # significance of "worse"
    min_gain: float = Field(default=0.0, ge=0)  # promote only when at least this much better
    bootstrap_samples: int = Field(default=1000, ge=100)  # resamples of test: bootstrap
    # Also refuse a candidate the test finds worse (beyond tolerance) than the best version ever
    # live: stops a chain of small accepted losses from sliding the loop downhill.
    drift_guard: bool = True
    # Rollback guard: live's newest `window` feedbacks; once `rollback_min_rows` of them are labeled,
    # the version before live answers the same rows, and live rolls back only when that version is
    # better there by more than `rollback_margin` (the paired test at `alpha`).  Both versions below
    # their held-out accuracy by more than the margin, the earlier no better: a `world_changed` event.
    window: int = Field(default=300, ge=20)
    rollback_min_rows: int = Field(default=100, ge=10)  # labeled rows the paired test needs (at most `window`)
    rollback_margin: float = Field(default=0.1, ge=0, le=1)  # accuracy points the earlier version must win by
    # Feedback trust: the guard rolls back only on a window sent by at least `min_clients`
    # distinct clients (API keys when serving.auth is on, else the x-evolve-client header),
    # and no one client's rows count beyond `max_client_share` of the window.
    min_clients: int = Field(default=3, ge=1)
    max_client_share: float = Field(default=0.2, gt=0, le=1)  # the most of a window one client's rows count for
    # An RL policy's returns on the gate's [0, 1] scale: [low, high], clipped (None: [0, the env's
    # max_episode_steps], for envs that pay between 0 and 1 per step, as CartPole does).
    return_range: tuple[float, float] | None = None

    @field_validator("stages")
    @classmethod
    def _once_each(cls, v: list[str]) -> list[str]:
        if len(set(v)) != len(v):
            raise ValueError(f"each gate stage at most once, got {v}")
        return v

    @model_validator(mode="after")
    def _range(self) -> "GateSection":
        if self.return_range is not None and not self.return_range[0] < self.return_range[1]:
            raise ValueError(f"gate.return_range must be [low, high] with low < high, got {list(self.return_range)}")
        return self

    def stage_settings(self, name: str) -> Any:
        """The section of stage `name`: a built-in one's, or the raw mapping of another's (None: unset)."""
        if name in type(self).model_fields:
            return getattr(self, name)
        return (self.model_extra or {}).get(name)


# An RL policy's gate: the same section, its own values (a user's keys are laid over these).
RL_DEFAULTS: dict[str, Any] = {
    "stages": [],
    "tolerance": 0.05,
    "ope": {"size": 100, "min_rows": 20, "min_ess": 10.0, "rule": "interval", "bootstrap_samples": 300},
    "canary": {"min_requests": 10, "max_requests": 60, "n_opt": 50},
}


def _over(defaults: dict[str, Any], given: dict[str, Any]) -> dict[str, Any]:
    out = dict(defaults)
    for key, value in given.items():
        out[key] = _over(out[key], value) if isinstance(value, dict) and isinstance(out.get(key), dict) else value
    return out


def _rl_values(v: Any) -> Any:
    return _over(RL_DEFAULTS, v) if isinstance(v, dict) else v


def rl_gate(values: dict[str, Any] | None = None) -> GateSection:
    """An RL policy's gate section: `values` laid over its defaults."""
    return GateSection.model_validate(_over(RL_DEFAULTS, values or {}))


# The type of an RL loop's `gate` field: a partial section is completed with RL_DEFAULTS.
RLGateSection = Annotated[GateSection, BeforeValidator(_rl_values)]

# A generator's gate: held-out scores are mean rewards (the paired bootstrap; McNemar needs right /
# wrong), the reward-hacking bounds after them, and an OPE slice of whole completions, whose
# weights are cut and estimated self-normalised (no reward model of completions for DR).
GENERATOR_DEFAULTS: dict[str, Any] = {
    "stages": ["heldout", "bounds"],
    "test": "bootstrap",
    "tolerance": 0.02,
    "ope": {"method": "snips", "size": 2000, "min_rows": 100, "min_ess": 20.0, "max_weight": 20.0,
            "rule": "interval"},
}


def _generator_values(v: Any) -> Any:
    return _over(GENERATOR_DEFAULTS, v) if isinstance(v, dict) else v


def generator_gate(values: dict[str, Any] | None = None) -> GateSection:
    """A generator's gate section: `values` laid over its defaults."""
    return GateSection.model_validate(_over(GENERATOR_DEFAULTS, values or {}))


# The type of a generate loop's `gate` field: a partial section is completed with GENERATOR_DEFAULTS.
GeneratorGateSection = Annotated[GateSection, BeforeValidator(_generator_values)]


# A decision policy's gate: no held-out set; logged decisions held back from training, doubly robust
# with the live policy's predicted rewards as the reward model, the interval's rule (a noisy
# estimate alone does not refuse).
DECISION_DEFAULTS: dict[str, Any] = {
    "stages": ["ope"],
    "tolerance": 0.02,
    "ope": {"fraction": 0.2, "method": "dr", "size": 3000, "min_rows": 300, "rule": "interval"},
}


def _decision_values(v: Any) -> Any:
    return _over(DECISION_DEFAULTS, v) if isinstance(v, dict) else v


def decision_gate(values: dict[str, Any] | None = None) -> GateSection:
    """A decision policy's gate section: `values` laid over its defaults."""
    return GateSection.model_validate(_over(DECISION_DEFAULTS, values or {}))


# The type of a decisions loop's `gate` field: a partial section is completed with DECISION_DEFAULTS.
DecisionGateSection = Annotated[GateSection, BeforeValidator(_decision_values)]
