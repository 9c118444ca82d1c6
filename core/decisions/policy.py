"""A decision policy: rank one request's actions, serve one with its propensity, learn from its reward.

    request: context namespaces, actions [{id, features}], ids to exclude
        -> FeatureSpace (hashed features and crosses per action)
        -> LinearScorer (predicted reward per action)
        -> explore.distribution (the served distribution; excluded actions 0)
        -> Decision: the ranking (by probability, then predicted reward), the chosen action drawn
           from the distribution, its propensity, every action's probability

A request a policy cannot take is a FeatureError naming the field (no actions, a duplicate id,
too many actions, every action excluded, a feature that is not one).
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any, Mapping, Sequence

import numpy as np

from core.config.decisions import DecisionExploreSection, DecisionModelSection
from core.decisions.explore import choose, distribution
from core.decisions.features import Encoded, FeatureError, FeatureSpace, namespaces
from core.decisions.linear import LinearScorer


@dataclass(frozen=True)
class Request:
    ids: list[str]  # the actions that may be served, in the request's order
    encoded: Encoded


@dataclass(frozen=True)
class Decision:
    ids: list[str]
    ranking: list[str]
    chosen: int  # index into ids
    propensity: float
    probabilities: list[float]
    predicted: list[float]

    @property
    def action(self) -> str:
        return self.ids[self.chosen]


class DecisionPolicy:
    def __init__(self, model: DecisionModelSection, explore: DecisionExploreSection, max_actions: int = 1024):
        self.space = FeatureSpace(model.bits, model.interactions)
        self.scorer = LinearScorer(model)
        self.explore, self.max_actions = explore, max_actions

    def request(self, context: Any, actions: Any, exclude: Sequence[str] = ()) -> Request:
        ctx = namespaces(context, "context")
        if not isinstance(actions, list) or not actions:
            raise FeatureError("actions", "a decision needs at least one action")
        if len(actions) > self.max_actions:
            raise FeatureError("actions", f"{len(actions)} actions, at most {self.max_actions}")
        ids, own, seen = [], [], set()
        for i, action in enumerate(actions):
            if not isinstance(action, Mapping) or not isinstance(action.get("id"), str) or not action["id"]:
                raise FeatureError(f"actions[{i}].id", "each action has a non-empty string id")
            if action["id"] in seen:
                raise FeatureError(f"actions[{i}].id", f"duplicate action id {action['id']!r}")
            seen.add(action["id"])
            if action["id"] in exclude:
                continue
            ids.append(action["id"])
            own.append(namespaces(action.get("features"), f"actions[{i}].features"))
        if not ids:
            raise FeatureError("exclude", "every action is excluded")
        return Request(ids, self.space.encode(ctx, own))

    def decide(self, req: Request, rng: np.random.Generator) -> Decision:
        predicted = self.scorer.predict(req.encoded)
        # SquareCB's gamma grows with what the scorer has learned from, which travels with its weights
        p = distribution(predicted, self.explore, self.scorer.updates)
        chosen = choose(p, rng)
        order = np.lexsort((-predicted, -p))
        return Decision(req.ids, [req.ids[k] for k in order], chosen, float(p[chosen]),
                        p.tolist(), predicted.tolist())

    def learn(self, req: Request, chosen: int, reward: float, propensity: float) -> float:
        return self.scorer.learn(req.encoded, chosen, reward, propensity)
