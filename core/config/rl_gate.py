"""`rl.gate` and `rl.traffic`: the RL loop's publish gate on `/act` traffic, and the clients that make it.

    rl.traffic   simulated clients play episodes through POST /v1/policies/<id>/act (each episode
                 under a client key drawn from `clients`), and hand each finished episode, with
                 the propensity of every served action, to the gate
    rl.gate      stages in order; empty (the default) publishes every learner version at once
        ope      per-decision importance sampling of the candidate's serving policy on episodes
                 live served (never trained on: /act episodes do not enter replay); refuses only
                 on evidence (the interval's upper end below live - tolerance, with enough
                 effective episodes); too few effective episodes defer to the canary
        canary   `fraction` of clients are answered by the candidate; an always-valid sequential
                 test on episode returns (scaled to [0, 1] by `return_range`) promotes or aborts

Returns are compared on a [0, 1] scale: `return_range` [low, high] maps a
return to it, clipped (None: [0, the env's `max_episode_steps`], for envs that
pay between 0 and 1 per step, as CartPole does), and `tolerance` is on that scale.
"""

from __future__ import annotations

from typing import Literal

from pydantic import Field, model_validator

from core.config.base import Section


class RLOPESection(Section):
    episodes: int = Field(default=100, ge=1)  # live's latest episodes the stage keeps
    min_episodes: int = Field(default=20, ge=1)  # the stage waits for this many (refuses before)
    min_ess: float = Field(default=10.0, gt=0)  # effective episodes below this: inconclusive, the canary decides
    level: float = Field(default=0.95, gt=0, lt=1)  # of the bootstrap interval on candidate - live
    bootstrap_samples: int = Field(default=300, ge=0)  # resamples of the interval


class RLCanarySection(Section):
    fraction: float = Field(default=0.2, gt=0, lt=1)  # share of client keys answered by the candidate
    min_episodes: int = Field(default=10, ge=2)  # the candidate's episodes before any decision
    max_episodes: int = Field(default=60, ge=2)  # exposure cap: promote at it without a significant drop
    alpha: float = Field(default=0.05, gt=0, lt=1)  # error rate of the sequential test
    n_opt: int = Field(default=50, ge=1)  # the confidence sequence is tightest near this many episodes


class RLGateSection(Section):
    stages: list[Literal["ope", "canary"]] = Field(default_factory=list)  # in order; none: every version goes live
    tolerance: float = Field(default=0.05, ge=0, lt=1)  # on the [0, 1] return scale
    return_range: tuple[float, float] | None = None  # None: [0, the env's max_episode_steps]
    ope: RLOPESection = Field(default_factory=RLOPESection)  # the `ope` stage's settings
    canary: RLCanarySection = Field(default_factory=RLCanarySection)  # the `canary` stage's settings

    @model_validator(mode="after")
    def _order(self) -> "RLGateSection":
        if len(set(self.stages)) != len(self.stages):
            raise ValueError(f"rl.gate.stages lists a stage twice: {self.stages}")
        if "canary" in self.stages and self.stages[-1] != "canary":
            raise ValueError("rl.gate.stages: canary runs on live traffic and must be the last stage")
        if self.return_range is not None and not self.return_range[0] < self.return_range[1]:
            raise ValueError(f"rl.gate.return_range must be [low, high] with low < high, got {list(self.return_range)}")
        if self.canary.min_episodes > self.canary.max_episodes:
            raise ValueError("rl.gate.canary.min_episodes must be <= max_episodes")
        return self


class ActTrafficSection(Section):
    """Clients of `/act`: started whenever `rl.gate.stages` is set (the gate's evidence), or `enabled`."""

    enabled: bool = False  # start the clients without a gate too
    episodes_at_once: int = Field(default=16, ge=1)  # episodes in flight: one batched /act per step
    clients: int = Field(default=1000, ge=1)  # distinct client keys; each episode draws one
    max_requests_per_s: float = Field(default=40.0, gt=0)  # batched /act calls per second at most
    num_cpus: float = Field(default=0.0, ge=0)  # Ray CPUs: light (it mostly waits on HTTP), not reserved
    seed: int = 0  # the clients' episode and key draws

    def active(self, gate: RLGateSection) -> bool:
        return self.enabled or bool(gate.stages)


