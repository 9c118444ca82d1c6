"""Simulated users: a classification stream turned into a decision problem (the contextual-bandit
bake-off's construction, Bietti, Agarwal & Langford 2021): the context is the row's features,
the actions are the classes, the reward is 1 for the row's own class and 0 otherwise.

Streams (river, installed with Evolve, no download):
    image_segments  river's ImageSegments (2,310 rows, 7 classes), reshuffled on each pass
    led             river's LED digits with 10% noise and 17 irrelevant features (10 classes)
    rbf_drift       river's RandomRBF (5 classes), a change of concept half way (over 100 rows)
                    (ConceptDriftStream between two seeds of the model)

Features are standardised online (river's StandardScaler, before the row is seen), so both a
policy and any anchor it is compared with read the same numbers.
"""

from __future__ import annotations

import itertools
import random
from dataclasses import dataclass
from typing import Any, Iterator

from river import datasets, preprocessing
from river.datasets import synth

STREAMS = ("image_segments", "led", "rbf_drift")
INTERACTIONS = [["x", "a"]]  # the context's features crossed with the action: one linear model per class


@dataclass(frozen=True)
class Round:
    context: dict[str, dict[str, float]]
    actions: list[dict[str, Any]]
    label: str  # the action that earns reward 1

    def reward(self, action_id: str) -> float:
        return 1.0 if action_id == self.label else 0.0


def _passes(rows: list[tuple[dict, Any]], seed: int) -> Iterator[tuple[dict, Any]]:
    rng = random.Random(seed)
    while True:
        rows = rows[:]
        rng.shuffle(rows)
        yield from rows


def _source(name: str, drift: int, seed: int) -> tuple[Iterator[tuple[dict, Any]], list[str]]:
    if name == "image_segments":
        rows = list(datasets.ImageSegments())
        return _passes(rows, seed), sorted({str(y) for _, y in rows})
    if name == "led":
        return iter(synth.LED(seed=seed, noise_percentage=0.1, irrelevant_features=True)), [str(c) for c in range(10)]
    if name == "rbf_drift":
        def rbf(model_seed: int) -> synth.RandomRBF:
            return synth.RandomRBF(seed_model=model_seed, seed_sample=seed, n_classes=5, n_features=10, n_centroids=20)
        drift = synth.ConceptDriftStream(rbf(seed), rbf(seed + 1000), seed=seed, position=drift, width=100)
        return iter(drift), [str(c) for c in range(5)]
    raise ValueError(f"unknown stream {name!r}; one of {', '.join(STREAMS)}")


def drift_at(name: str, events: int) -> int | None:
    """The event at which the stream's concept changes (half way through `events`), if it does."""
    return events // 2 if name == "rbf_drift" else None


def rounds(name: str, events: int, seed: int = 0, drift: int | None = None) -> Iterator[Round]:
    """`events` rounds; a drifting stream changes at `drift` (default: drift_at(name, events))."""
    source, classes = _source(name, drift if drift is not None else events // 2, seed)
    actions = [{"id": c, "features": {"a": {"class": c}}} for c in classes]
    scaler = preprocessing.StandardScaler()
    for x, y in itertools.islice(source, events):
        x = {str(k): float(v) for k, v in x.items()}
        scaled = scaler.transform_one(x) if scaler.counts else {k: 0.0 for k in x}
        scaler.learn_one(x)
        yield Round({"x": scaled}, actions, str(y))


def uniform_reward(name: str) -> float:
    """The expected reward of serving an action uniformly at random (1 / classes): the floor."""
    return 1.0 / len(_source(name, 2, 0)[1])
