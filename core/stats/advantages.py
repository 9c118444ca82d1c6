"""A batch's advantages: each completion's reward less a baseline that does not depend on its own tokens.

    advantages(rewards, groups, running_baseline, group_std=True, pools=None) -> (advantages, grouped)
    GroupRewards: the rewards seen of each recent group, across batches (the `pools`)

Group-relative (GRPO, Shao et al. 2024): where a batch holds several rated completions of one
group (one request's prompt, or one preference's pair), the baseline is the group's mean reward and,
with `group_std`, the advantage is divided by the group's standard deviation (ddof 0: a preference
pair's two completions get +1 and -1).  A group whose rewards are all equal teaches nothing: its
advantages are 0.  A completion alone in its group is compared with a running mean of past rewards
(`RunningBaseline`), since its prompt has nothing in the batch to compare it with.

A replay sampler draws rows one by one, so a request's rated completions seldom share a batch;
`pools` (from `GroupRewards`) holds every reward seen of a group in any batch, and a group is then
centred on its pool rather than on its members in this batch.
"""

from __future__ import annotations

from collections import OrderedDict
from typing import Mapping, Sequence

import numpy as np

STD_FLOOR = 1e-6  # below it a group's rewards are equal: its advantages are 0, not 0/0


def advantages(rewards: np.ndarray, groups: Sequence[object], running_baseline: float,
               group_std: bool = True, pools: Mapping[str, np.ndarray] | None = None) -> tuple[np.ndarray, np.ndarray]:
    """(advantage per completion float32, True where it came from its group rather than the running baseline).

    `pools`: group -> every reward known of it (this batch's included); a group found there is centred
    on its pool, else on its members in this batch."""
    rewards = np.asarray(rewards, np.float64)
    names = np.asarray([str(g) for g in groups], dtype=object)
    codes = np.unique(names, return_inverse=True)[1].reshape(-1)
    adv = rewards - running_baseline
    grouped = np.zeros(len(rewards), bool)
    for code in np.unique(codes):
        members = np.flatnonzero(codes == code)
        pool = rewards[members]
        if pools is not None and names[members[0]] in pools:
            pool = np.asarray(pools[names[members[0]]], np.float64)
        if len(pool) < 2:
            continue
        centred = rewards[members] - pool.mean()
        if group_std:
            std = pool.std()  # NaN where a reward is: the advantages stay NaN and the learner refuses the step
            centred = np.zeros_like(centred) if std <= STD_FLOOR else centred / std
        adv[members] = centred
        grouped[members] = True
    return adv.astype(np.float32), grouped


class GroupRewards:
    """The rewards seen of each of the `max_groups` newest groups, one per completion (`key`):
    a completion sampled again is not counted twice."""

    def __init__(self, max_groups: int = 20_000):
        self.max_groups = max_groups
        self._groups: OrderedDict[str, dict[str, float]] = OrderedDict()

    def add(self, groups: Sequence[str], keys: Sequence[str], rewards: np.ndarray) -> None:
        for group, key, reward in zip(groups, keys, np.asarray(rewards, np.float64)):
            seen = self._groups.setdefault(str(group), {})
            seen[str(key)] = float(reward)
            self._groups.move_to_end(str(group))
        while len(self._groups) > self.max_groups:
            self._groups.popitem(last=False)

    def pools(self, groups: Sequence[str]) -> dict[str, np.ndarray]:
        return {str(g): np.fromiter(self._groups[str(g)].values(), np.float64)
                for g in set(groups) if str(g) in self._groups}


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
