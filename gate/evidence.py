"""Live evidence about a policy: what the joiner and the `/act` clients hand the gate, and what it reads.

The one call (`Gate.evidence(policy_id, items)`) takes plain dicts, which cross Ray and need
nothing of this package to build:

    {"type": "feedback", "row": {...}, "client": sender, "slice": None | "recent" | "ope"}
        a joined feedback: its row as the joiner joined it (what was served: policy_version,
        text / text_pair, prediction, probs, propensity; the feedback: label and / or reward; and
        shadow_version / shadow_prediction when a shadow answered too); `slice`: what the gate's
        `Slices` rule (gate/slices.py) held it out of training for.  A generator's row is a
        completions row (core/data/schemas.py `completions_schema`): prompt, prompt_ids,
        token_ids, sampling_logprobs, temperature, top_p, and thumbs_up or reward
    {"type": "answered", "version", "novelty", "prediction"}    a request a replica answered
    {"type": "episode", "version", "client", "obs", "actions", "propensities", "rewards"}
        a finished `/act` episode (version None: several versions served it)
    {"type": "unservable", "version", "reason"}    a replica cannot answer from that version

A policy kind (gate/kinds/) reads each into an `Evidence`: the parts a stage can use, whatever
the kind.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any


@dataclass
class Evidence:
    version: int | None = None  # the version that answered
    # the unit's score on [0, 1] for that version: a feedback's reward (a label: 1 if the served
    # answer was right), an episode's return on the gate's scale
    score: float | None = None
    window: tuple[float, float] | None = None  # (value, weight) for the version's greedy accuracy
    client: str | None = None  # who sent it (None: anonymous, one sender)
    logged: Any = None  # a logged decision for off-policy evaluation, in the kind's shape
    example: tuple[Any, int] | None = None  # (input, label) held out of training: the recent slice
    # (input, label) of any labeled feedback: the rollback guard scores an earlier version on the
    # rows live answered (the window's value then says whether live's greedy answer was right)
    labeled: tuple[Any, int] | None = None
    shadow: tuple[int, tuple] | None = None  # (shadow version, the row its comparison needs)
    answered: tuple[float | None, int] | None = None  # (novelty or None, predicted label)
    inputs: list | None = None  # the inputs the version answered (stages that compare answers)
    unservable: str | None = None  # why the version cannot answer


def unservable(item: dict[str, Any]) -> Evidence:
    return Evidence(version=int(item["version"]), unservable=str(item.get("reason") or "unservable"))
