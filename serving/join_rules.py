"""The join's per-feedback rules, kept apart from its bookkeeping (serving/join.py).

    FeedbackRejected a feedback (or request) refused, with its HTTP status
    greedy_verdict   what one feedback says about the predicting version's greedy accuracy
    check_reward     a reward is a number in [0, 1]
    split_shadow     a joined row -> (the replay row, the gate's shadow row or None): a shadow's
                     answer (serving/gate_shadow.py) is the gate's evidence, not training data,
                     and the replay `feedback` schema has no column for it
"""

from __future__ import annotations

import math
from typing import TYPE_CHECKING, Any, Mapping

if TYPE_CHECKING:
    from serving.event_join import Event

SHADOW_FIELDS = ("shadow_version", "shadow_prediction")
# what the gate's shadow stage needs of a joined row: what was served and with which probability,
# the feedback, live's class probabilities (the reward model) and the shadow's answer
SHADOW_ROW = ("prediction", "propensity", "label", "reward", "probs", "policy_version", *SHADOW_FIELDS)


class FeedbackRejected(Exception):
    """A feedback (or request) refused with an HTTP status and the reason."""

    def __init__(self, status: int, detail: str, retry_after_s: float | None = None):
        super().__init__(detail)
        self.status, self.detail, self.retry_after_s = status, detail, retry_after_s

    def headers(self) -> dict[str, str] | None:
        """`Retry-After` for a refusal that passes (a full queue, overload)."""
        return None if self.retry_after_s is None else {"Retry-After": str(max(1, round(self.retry_after_s)))}

    def __reduce__(self):  # crosses process boundaries (Ray) intact
        return (type(self), (self.status, self.detail, self.retry_after_s))


def greedy_verdict(ev: "Event", label: int | None, reward: float | None) -> tuple[float, float]:
    """(value, weight) of one feedback for the version's greedy accuracy (EventJoin.prequential)."""
    greedy = max(range(len(ev.probs)), key=ev.probs.__getitem__)
    if label is not None:
        return float(label == greedy), 1.0
    if ev.propensity is None or ev.propensity >= 1.0:
        return float(reward), 1.0
    return float(reward), (1.0 / ev.propensity if ev.prediction == greedy else 0.0)


def check_reward(reward: Any) -> float | None:
    if reward is None:
        return None
    if isinstance(reward, bool) or not isinstance(reward, (int, float)) or not math.isfinite(reward) \
            or not 0.0 <= reward <= 1.0:
        raise FeedbackRejected(422, f"reward must be a number in [0, 1], got {reward!r}")
    return float(reward)


def describe(fb: tuple[int | None, float | None]) -> str:
    return ", ".join(f"{k}={v}" for k, v in (("label", fb[0]), ("reward", fb[1])) if v is not None)


def split_shadow(row: Mapping[str, Any]) -> tuple[dict[str, Any], dict[str, Any] | None]:
    replay = {k: v for k, v in row.items() if k not in SHADOW_FIELDS}
    if row.get("shadow_prediction") is None:
        return replay, None
    return replay, {k: row.get(k) for k in SHADOW_ROW}
