"""The decision app's request and response models: its OpenAPI contract (serving/decision_app.py).

Bodies are parsed by hand in serving/decision_requests.py (one-line reasons naming the field); these
models name the contract for the spec and the responses.
"""

# no `from __future__ import annotations`: FastAPI must see the annotations themselves

from typing import Union

from pydantic import BaseModel, Field

Feature = Union[float, str, list[str]]


class ActionIn(BaseModel):
    id: str = Field(..., description="unique within the request")
    features: dict[str, dict[str, Feature]] | None = Field(None, description="namespaces of the action's features")


class RankRequest(BaseModel):
    context: dict[str, dict[str, Feature]] | None = Field(None, description="namespaces of the request's features")
    actions: list[ActionIn] = Field(..., description="at least one, at most serving.max_actions")
    exclude: list[str] | None = Field(None, description="action ids that must not be served")


class RankedAction(BaseModel):
    id: str
    probability: float = Field(..., description="the probability it had of being served")


class RankResponse(BaseModel):
    policy_id: str
    model_version: int = Field(..., description="the version that ranked the actions")
    event_id: str = Field(..., description="name this decision in its reward")
    action_id: str = Field(..., description="the action served: use this one")
    propensity: float = Field(..., description="the probability the served action had")
    ranking: list[RankedAction] = Field(..., description="every action that could be served, best first")


class RewardRequest(BaseModel):
    event_id: str
    reward: float = Field(..., description="in [serving.reward_min, serving.reward_max]")


class RewardResponse(BaseModel):
    event_id: str
    accepted: bool
    model_version: int = Field(..., description="the version that made the decision")
    action_id: str
    reward: float


class DecisionHealth(BaseModel):
    status: str
    policy_id: str
    model_version: int | None
