"""Each served version's prequential window over its newest feedback, with feedback trust.

What the rollback guard (gate/stages/rollback.py) reads: a version's accuracy as it
would answer greedily over its last `window` feedbacks, no one sender's rows counting beyond
`max_client_share` of the window, and how many distinct senders the window holds. Feedback
with no sender (no key, no client header) is one sender, "anonymous": however many
people send it, they count once toward `min_clients` and share one cap.
"""

from __future__ import annotations

import math
from collections import deque

MAX_VERSIONS_TRACKED = 100  # prequential windows kept (newest versions)


class PrequentialWindows:
    def __init__(self, window: int, max_client_share: float = 1.0):
        self.window, self.max_client_share = window, max_client_share
        # version -> last `window` (value, weight, client): who sent each feedback, for the share cap
        self.scores: dict[int, deque[tuple[float, float, str | None]]] = {}

    def prequential(self) -> dict[int, tuple[float, int]]:
        """{policy_version: (correct, n)} over each version's last `window` feedbacks.

        correct / n is the version's accuracy as it would answer greedily, the figure the gate
        measured on the held-out set: 1/0 for labeled feedback (the label against the version's
        argmax), the reward for reward-only feedback.  With exploration the served answer is
        sometimes not the argmax; its reward then says nothing about the greedy answer, and the
        window is self-normalised over the rows served greedily, each weighted 1 / propensity.
        """
        out = {}
        for v, s in sorted(self.scores.items()):
            kept = self._capped(s)  # the mean over the capped rows; n stays the window's (is it full yet)
            weight = sum(w for _, w, _ in kept)
            if weight > 0:
                out[v] = (sum(x * w for x, w, _ in kept) / weight * len(s), len(s))
        return out

    def clients(self) -> dict[int, int]:
        """{policy_version: distinct feedback senders in its window}; unattributed rows (None) are
        one sender: nothing says they come from more than one."""
        return {v: len({c for _, _, c in s}) for v, s in sorted(self.scores.items())}

    def _capped(self, rows: deque) -> list[tuple[float, float, str | None]]:
        """The window with each sender's rows beyond `max_client_share` of it left out (its oldest):
        one client, however busy, moves the figure by at most its share; the unattributed rows too."""
        if self.max_client_share >= 1:
            return list(rows)
        cap = max(1, math.ceil(self.max_client_share * len(rows)))
        seen: dict[str | None, int] = {}
        kept = []
        for row in reversed(rows):
            seen[row[2]] = seen.get(row[2], 0) + 1
            if seen[row[2]] <= cap:
                kept.append(row)
        return kept[::-1]

    def add(self, version: int, value: float, weight: float, client: str | None = None) -> None:
        if version not in self.scores:
            self.scores[version] = deque(maxlen=self.window)
            for old in sorted(self.scores)[:-MAX_VERSIONS_TRACKED]:
                del self.scores[old]
        self.scores[version].append((value, weight, client))
