"""The reward rule: a joined row of the `completions` table -> the rewarded completions a learner uses.

    rule = RewardRule.from_section(section.learning)
    rule.scored(row)  -> [ScoredCompletion, ...]   (one for thumbs or a reward, two for a preference)

What each kind of feedback is worth (the config's `learning` group states the numbers):

    thumbs      up -> `thumbs_up_reward`, down -> `thumbs_down_reward`
    reward      passed through, clipped into [`reward_min`, `reward_max`]
    preference  the chosen completion +`preference_reward`, the rejected one -`preference_reward`;
                the pair is a group of its own (`group` names both event ids), so a group-relative
                baseline compares the two with each other only: a preference says which is better,
                not how good either is on the thumbs' scale, and it never moves the running baseline
                of absolute rewards (`relative` is True)

A row whose reward is not a finite number gives nothing (the learner counts it as dropped).  Plain
Python: serving, the gate and tests read the same rule without torch.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Any, Mapping, Sequence


@dataclass(frozen=True)
class ScoredCompletion:
    """One completion with its reward, as a learner needs it: the tokens and the sampling version's
    log-probability of each (under the model, temperature 1)."""

    prompt_ids: Sequence[int]
    token_ids: Sequence[int]
    logprobs: Sequence[float]
    reward: float
    group: str  # completions compared with each other: one request's prompt, or one preference's pair
    policy_version: int  # the version that sampled it
    relative: bool = False  # a preference's reward: meaningful only against its pair
    key: str = ""  # the completion's event id: one reward per completion in a group's pool


@dataclass(frozen=True)
class RewardRule:
    thumbs_up: float = 1.0
    thumbs_down: float = 0.0
    reward_min: float = 0.0
    reward_max: float = 1.0
    preference: float = 0.5

    @classmethod
    def from_section(cls, learning: Any) -> "RewardRule":
        """From a `generate` loop's `learning` group (core/config/generate.py)."""
        return cls(thumbs_up=learning.thumbs_up_reward, thumbs_down=learning.thumbs_down_reward,
                   reward_min=learning.reward_min, reward_max=learning.reward_max,
                   preference=learning.preference_reward)

    def scalar(self, reward: float | None) -> float:
        """A scalar reward clipped into the declared range; NaN for a missing or non-finite one."""
        if reward is None or not math.isfinite(reward):
            return math.nan
        return min(max(float(reward), self.reward_min), self.reward_max)

    def thumbs(self, up: bool) -> float:
        return self.thumbs_up if up else self.thumbs_down

    def score(self, row: Mapping[str, Any]) -> float | None:
        """One rated completion's reward on its own (what a live unit scores); None for a preference,
        which says only which of two is better, and for feedback with no finite reward."""
        if row.get("feedback") == "preference" or row.get("rejected_completion") is not None:
            return None
        if row.get("reward") is not None:
            value = self.scalar(row["reward"])
            return None if math.isnan(value) else value
        if row.get("thumbs_up") is not None:
            return self.thumbs(bool(row["thumbs_up"]))
        return None

    def scored(self, row: Mapping[str, Any]) -> list[ScoredCompletion]:
        """The rewarded completions of one row; [] when its feedback gives no finite reward."""
        kind = row.get("feedback")
        version = int(row["policy_version"])
        if kind == "preference":
            return self._pair(row, version)
        if kind == "thumbs" and row.get("thumbs_up") is not None:
            reward = self.thumbs(bool(row["thumbs_up"]))
        elif kind == "reward":
            reward = self.scalar(row.get("reward"))
        else:
            return []
        if not math.isfinite(reward):
            return []
        return [ScoredCompletion(row["prompt_ids"], row["token_ids"], row["logprobs"], reward, row["group_id"], version,
                                 key=str(row.get("event_id", "")))]

    def _pair(self, row: Mapping[str, Any], version: int) -> list[ScoredCompletion]:
        if row.get("rejected_token_ids") is None or row.get("rejected_logprobs") is None:
            return []
        pair = f"{row['group_id']}:{row['event_id']}>{row.get('rejected_event_id')}"
        rejected_version = row.get("rejected_policy_version")
        return [
            ScoredCompletion(row["prompt_ids"], row["token_ids"], row["logprobs"], self.preference, pair, version, True,
                             key=str(row.get("event_id", ""))),
            ScoredCompletion(row["prompt_ids"], row["rejected_token_ids"], row["rejected_logprobs"], -self.preference,
                             pair, int(rejected_version) if rejected_version is not None else version, True,
                             key=str(row.get("rejected_event_id", ""))),
        ]
