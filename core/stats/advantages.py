"""A batch's advantages: each completion's reward less a baseline that does not depend on its own tokens.

    advantages(rewards, groups, running_baseline, group_std=True) -> (advantages, grouped)

Group-relative (GRPO, Shao et al. 2024): where a batch holds several rated completions of one
group (one request's prompt, or one preference's pair), the baseline is the group's mean reward and,
with `group_std`, the advantage is divided by the group's standard deviation (ddof 0: a preference
pair's two completions get +1 and -1).  A group whose rewards are all equal teaches nothing: its
advantages are 0.  A completion alone in its group is compared with a running mean of past rewards
(`RunningBaseline`), since its prompt has nothing in the batch to compare it with.
"""

from __future__ import annotations

from typing import Sequence

import numpy as np

STD_FLOOR = 1e-6  # below it a group's rewards are equal: its advantages are 0, not 0/0


def advantages(rewards: np.ndarray, groups: Sequence[object], running_baseline: float,
               group_std: bool = True) -> tuple[np.ndarray, np.ndarray]:
    """(advantage per completion float32, True where it came from its group rather than the running baseline)."""
    rewards = np.asarray(rewards, np.float64)
    codes = np.unique(np.asarray([str(g) for g in groups], dtype=object), return_inverse=True)[1].reshape(-1)
    adv = rewards - running_baseline
    grouped = np.zeros(len(rewards), bool)
    for code in np.unique(codes):
        members = np.flatnonzero(codes == code)
        if len(members) < 2:
            continue
        r = rewards[members]
        centred = r - r.mean()
        if group_std:
            std = r.std()  # NaN where a reward is: the advantages stay NaN and the learner refuses the step
            centred = np.zeros_like(centred) if std <= STD_FLOOR else centred / std
        adv[members] = centred
        grouped[members] = True
    return adv.astype(np.float32), grouped


class RunningBaseline:
    """An exponential moving mean of absolute rewards, moved after each update (never a row's own baseline)."""

    def __init__(self, initial: float, decay: float):
        if not 0 < decay < 1:
            raise ValueError(f"baseline decay must be in (0, 1), got {decay}")
        self.value, self.decay = float(initial), float(decay)

    def update(self, rewards: np.ndarray) -> None:
        rewards = np.asarray(rewards, np.float64)
        rewards = rewards[np.isfinite(rewards)]
        if len(rewards):
            d = self.decay ** len(rewards)
            self.value = d * self.value + (1.0 - d) * float(rewards.mean())
