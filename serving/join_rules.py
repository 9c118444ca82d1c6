"""The join's per-feedback rules, kept apart from its bookkeeping (serving/event_join.py, serving/join.py).

    FeedbackRejected a feedback (or request) refused, with its HTTP status
    check_reward     a reward is a number in [0, 1] (or the declared range)
    describe         a feedback as a refusal names it
"""

from __future__ import annotations

import math
from typing import Any


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


def check_reward(reward: Any, low: float = 0.0, high: float = 1.0) -> float | None:
    if reward is None:
        return None
    if isinstance(reward, bool) or not isinstance(reward, (int, float)) or not math.isfinite(reward) \
            or not low <= reward <= high:
        raise FeedbackRejected(422, f"reward must be a number in [{low:g}, {high:g}], got {reward!r}")
    return float(reward)


def describe(fb: tuple[int | None, float | None]) -> str:
    return ", ".join(f"{k}={v}" for k, v in (("label", fb[0]), ("reward", fb[1])) if v is not None)

