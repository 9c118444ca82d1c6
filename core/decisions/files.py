"""A decision policy as registry files: the scorer's arrays as weights, its settings as `decision.json`.

A replica rebuilds the same policy from a version alone: the hash space and crosses (so a
request's features land in the buckets the learner trained), the exploration and the number
of updates behind the weights (SquareCB's gamma grows with it).
"""

from __future__ import annotations

import json
from typing import Any, Mapping

import numpy as np

from core.config.decisions import DecisionExploreSection, DecisionModelSection
from core.decisions.policy import DecisionPolicy

POLICY_FILE = "decision.json"


def policy_files(policy: DecisionPolicy) -> tuple[dict[str, np.ndarray], dict[str, bytes]]:
    """(weights, files) for PolicyRegistry.publish."""
    spec = {"model": policy.scorer.cfg.model_dump(), "explore": policy.explore.model_dump()}
    return policy.scorer.state(), {POLICY_FILE: json.dumps(spec, indent=1).encode()}


def policy_from_files(weights: Mapping[str, Any], files: Mapping[str, bytes], max_actions: int = 1024) -> DecisionPolicy:
    if POLICY_FILE not in files:
        raise ValueError(f"not a decision policy: no {POLICY_FILE}")
    spec = json.loads(files[POLICY_FILE])
    policy = DecisionPolicy(DecisionModelSection.model_validate(spec["model"]),
                            DecisionExploreSection.model_validate(spec["explore"]), max_actions)
    policy.scorer.load({k: np.asarray(v) for k, v in weights.items()})
    return policy
