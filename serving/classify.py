"""One batch of texts answered by one classifier version: predictions for clients, events for the joiner.

A text is a model input (core/data/inputs.py): one string, or a (text, text_pair) pair;
the event keeps the pair's second text in `text_pair` (None for one text).

    probabilities [N, L] -> serving distribution (core/stats/exploration.py) -> served label ~ it
    client:  label, probabilities (the model's), propensity (the served label's probability), novelty
    event:   prediction (the served label), probs, propensity, action_probs (the serving distribution),
             and with a shadow (gate/stages/shadow.py) its version and greedy answer

The event keeps both distributions: the learner's reward-only update and
off-policy evaluation (core/stats/ope.py) need the probability the answer was
served with, the reward model of a doubly robust estimate the model's own.
"""

from __future__ import annotations

import uuid
from dataclasses import dataclass

import numpy as np

from core.stats.exploration import ExplorationSection, choose, serving_distribution
from core.models.classifier import ClassifierBundle
from core.data.inputs import TextInput, split_input
from serving.novelty import NoveltyFollower

GREEDY = ExplorationSection()


@dataclass(frozen=True)
class Served:
    """What answers requests now; replaced whole (never mutated) by a hot swap."""

    bundle: ClassifierBundle
    version: int


def greedy_answers(served: Served, texts: list[TextInput]) -> list[tuple[int, int]]:
    """(version, label id) per text: what `served` answers without exploring (a shadow's answers)."""
    return [(served.version, k) for k in served.bundle.predict_proba(texts).argmax(-1).tolist()]


def classify(served: Served, texts: list[TextInput], policy_id: str, replica: str,
             novelty: NoveltyFollower | None = None, explore: ExplorationSection = GREEDY,
             rng: np.random.Generator | None = None,
             shadow: list[tuple[int, int] | None] | None = None) -> tuple[list[dict], list[dict]]:
    """(predictions for the client, events for the joiner) of one batch, by one version; `shadow`:
    per text, the shadow's (version, answer) or None, logged in the event only."""
    probs = served.bundle.predict_proba(texts)  # [N, L]
    dist = serving_distribution(probs, explore)
    actions, propensities = choose(dist, rng if rng is not None else np.random.default_rng())
    novel = novelty.score(texts) if novelty is not None else [None] * len(texts)
    labels = served.bundle.labels
    shadow = shadow or [None] * len(texts)
    preds, events = [], []
    for item, p, d, k, mu, nov, sh in zip(texts, probs, dist, actions.tolist(), propensities.tolist(), novel, shadow):
        event_id = uuid.uuid4().hex
        text, text_pair = split_input(item)
        preds.append({"label": labels[k], "probabilities": {name: float(x) for name, x in zip(labels, p)},
                      "event_id": event_id, "model_version": served.version, "novelty": nov,
                      "propensity": float(mu)})
        events.append({"event_id": event_id, "text": text, "text_pair": text_pair, "prediction": k, "probs": [float(x) for x in p],
                       "labels": labels, "policy_id": policy_id, "policy_version": served.version,
                       "actor_id": replica, "novelty": nov, "propensity": float(mu),
                       "action_probs": [float(x) for x in d],
                       "shadow_version": None if sh is None else sh[0],
                       "shadow_prediction": None if sh is None else sh[1]})
    return preds, events
