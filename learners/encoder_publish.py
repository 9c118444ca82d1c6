"""An MLM learner's encoder published while it trains, for the classifiers that re-base onto it.

At a held-out evaluation (rank 0) whose masked accuracy beats the last
published one by `min_gain`, the encoder goes to the registry as a new version
of the loop's policy, its parent the previous one.  The learner's first
evaluation is where it starts (a random init, or a resumed encoder already
published), so it sets the bar and publishes nothing.  A classifier of the same run
(learners/rebase.py) picks it up from there; the end-of-run publish of the
pretraining loop stays as it is and continues this lineage.
"""

from __future__ import annotations

import time
from dataclasses import dataclass, field
from typing import Any, Callable

from core.storage.registry import PolicyRegistry, RegistryError

METRICS = ("masked_accuracy", "perplexity", "eval_loss")


@dataclass
class InterimPublish:
    """Where and when (pickled into the MLM setup)."""

    registry_uri: str
    policy_id: str
    min_gain: float = 0.01
    info: dict[str, Any] = field(default_factory=dict)  # the loop's lineage facts (corpus, tokenizer)


class EncoderPublisher:
    def __init__(self, spec: InterimPublish):
        self.spec = spec
        self.registry = PolicyRegistry(spec.registry_uri)
        self.best: float | None = None
        self.published: list[int] = []
        self.refused = 0  # publishes the registry refused (e.g. non-finite weights): the run goes on

    def offer(self, figures: dict[str, float], export: Callable[[], Any], evaluations: int) -> int | None:
        """Publish when `figures` beat the last published by min_gain; returns the new version or None."""
        acc = figures.get("masked_accuracy")
        if acc is None or acc != acc:
            return None
        if self.best is None:
            self.best = acc
            return None
        if acc < self.best + self.spec.min_gain:
            return None
        policy = export()
        latest = self.registry.latest(self.spec.policy_id)
        metadata = {
            "parent_version": latest.version if latest is not None else None,
            "metrics": {k: float(figures[k]) for k in METRICS if k in figures},
            "data_range": {"evaluations": evaluations},
            "info": {**self.spec.info, **policy.info, "objective": "mlm", "kind": "bert-encoder",
                     "interim": True, "published_at": time.time()},
        }
        try:
            version = self.registry.publish(self.spec.policy_id, policy.weights, metadata, files=policy.files)
        except RegistryError:
            self.refused += 1
            return None
        self.best = acc
        self.published.append(version)
        return version
