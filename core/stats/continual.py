"""Forgetting, measured at any time: the accuracy matrix of a grouped stream and its summaries.

For a stream of groups 0..T-1 (domains, seen one after another), R[i][j] is
the accuracy on group j's held-out rows of the version live after the stream
moved through group i, and b[j] that of the version live before any of the
stream was learned (Lopez-Paz & Ranzato 2017, "Gradient Episodic Memory"; the
definitions Avalanche computes).  The stream may not have finished: with c the
newest group it has reached and A the newest accuracies measured (the live
version's, at a row or at any change of live since),

    ACC = 1/(c+1) * sum_{j<=c}  A[j]                  what the version live now knows of the groups seen
    BWT = mean_{j<c}            A[j] - R[j][j]        < 0: later groups cost the groups already left
    FWT = mean_{0<j<=c}         R[j-1][j] - b[j]      > 0: earlier groups helped before group j came

and, for each group j already left, worst[j] = the lowest accuracy it had at
any measurement while the stream was on a later group (every change of live
is measured, so the dip inside a group shows, not only the group boundaries):

    worst_accuracy = min_j worst[j]                   the worst any seen group fell to
    min_ACC        = mean_j worst[j]                  (De Lange et al. 2023, "Continual evaluation")
    stability_gap  = max_j R[j][j] - worst[j]         the deepest dip below where a group was left

Once the stream has finished (c = T-1 and A = R[T-1]) ACC, BWT and FWT are the
textbook figures.  A row is recorded when the stream leaves a group (and once at
the end); a summary with nothing to average over is None.
"""

from __future__ import annotations

from typing import Any, Mapping, Sequence


class AccuracyMatrix:
    def __init__(self, groups: Sequence[str]):
        if len(groups) < 1 or len(set(groups)) != len(groups):
            raise ValueError(f"groups must be distinct and non-empty, got {list(groups)}")
        self.groups = list(groups)
        self.index = {g: i for i, g in enumerate(self.groups)}
        self.rows: dict[int, list[float]] = {}
        self.baseline: list[float] | None = None
        self.position: int | None = None  # c: the newest group the stream has reached
        self.latest: list[float] | None = None  # A: the newest accuracies measured
        self.worst: dict[int, float] = {}  # j -> the lowest accuracy of group j since the stream left it

    def record_baseline(self, accuracy: Mapping[str, float]) -> None:
        """b: the accuracies before the stream's first group was learned."""
        self.baseline = self.latest = self._row(accuracy)

    def enter(self, group: str) -> None:
        """The stream has reached `group` (a stream that cycles back stays at its furthest group)."""
        i = self.index[group]
        self.position = i if self.position is None else max(self.position, i)

    def record(self, after_group: str, accuracy: Mapping[str, float]) -> None:
        """R[i]: the accuracies once the stream has moved through group `after_group` (at the run's
        end, through as much of it as the stream got to)."""
        i = self.index[after_group]
        self.rows[i] = row = self._row(accuracy)
        self.enter(after_group)
        self._measured(row)

    def observe(self, accuracy: Mapping[str, float]) -> None:
        """The accuracies of the version live now (a promotion, a rollback)."""
        if self.position is not None:
            self._measured(self._row(accuracy))

    def _measured(self, row: list[float]) -> None:
        self.latest = row
        for j in range(self.position):  # the groups the stream has left
            self.worst[j] = min(self.worst.get(j, row[j]), row[j])

    def _row(self, accuracy: Mapping[str, float]) -> list[float]:
        missing = [g for g in self.groups if g not in accuracy]
        if missing:
            raise ValueError(f"no accuracy for groups {missing}")
        return [float(accuracy[g]) for g in self.groups]

    def metrics(self) -> dict[str, Any]:
        T, R, b, c, A = len(self.groups), self.rows, self.baseline, self.position, self.latest
        out: dict[str, Any] = {"groups": list(self.groups), "matrix": [R.get(i) for i in range(T)], "baseline": b,
                               "seen": 0 if c is None else c + 1, "finished": all(i in R for i in range(T)),
                               "ACC": None, "BWT": None, "FWT": None, "worst_accuracy": None, "worst_group": None,
                               "min_ACC": None, "stability_gap": None}
        if c is None or A is None:
            return out
        out["ACC"] = _mean([A[j] for j in range(c + 1)])
        out["BWT"] = _mean([A[j] - R[j][j] for j in range(c) if j in R])
        if b is not None:
            out["FWT"] = _mean([R[j - 1][j] - b[j] for j in range(1, c + 1) if j - 1 in R])
        if self.worst:
            j_worst = min(self.worst, key=lambda j: self.worst[j])
            out.update(worst_accuracy=self.worst[j_worst], worst_group=self.groups[j_worst],
                       min_ACC=_mean(list(self.worst.values())))
            out["stability_gap"] = max((R[j][j] - w for j, w in self.worst.items() if j in R), default=None)
        return out

    def headline(self) -> dict[str, float | None]:
        """The few figures a progress line carries."""
        m = self.metrics()
        return {k: None if m[k] is None else round(m[k], 3) for k in ("ACC", "BWT", "FWT", "stability_gap")}


def _mean(values: list[float]) -> float | None:
    return sum(values) / len(values) if values else None
