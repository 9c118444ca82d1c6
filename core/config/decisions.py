"""A decision policy's model and exploration (core/decisions/)."""

from __future__ import annotations

from typing import Literal

from pydantic import Field, field_validator

from core.config.base import Section


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

    kind: Literal["epsilon", "softmax", "squarecb"] = "squarecb"
    epsilon: float = Field(default=0.05, ge=0, le=1)  # epsilon: the share spread evenly
    softmax_lambda: float = Field(default=10.0, gt=0)  # softmax: exp(lambda * predicted reward)
    # squarecb (inverse-gap weighting, Foster & Rakhlin 2020): gamma = scale * decisions**exponent
    gamma_scale: float = Field(default=10.0, gt=0)
    gamma_exponent: float = Field(default=0.5, ge=0, le=1)
