"""Forgetting, measured: the accuracy matrix of a grouped stream and its summaries.

For a stream of groups 0..T-1 (domains, seen one after another), R[i][j] is
the accuracy on group j's held-out rows of the version live after the stream
moved through group i, and b[j] that of the version live before any of the
stream was learned (Lopez-Paz & Ranzato 2017, "Gradient Episodic Memory"; the
definitions Avalanche computes):

    ACC = 1/T      * sum_j        R[T-1][j]               what the final version knows
    BWT = 1/(T-1)  * sum_{j<T-1}  R[T-1][j] - R[j][j]     < 0: learning later groups cost earlier ones
    FWT = 1/(T-1)  * sum_{j>0}    R[j-1][j] - b[j]        > 0: earlier groups helped before group j came

A row is recorded when the stream leaves a group (and once at the end); rows
of groups the stream has not finished stay missing, and a summary that needs
them is None.
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

    def record_baseline(self, accuracy: Mapping[str, float]) -> None:
        """b: the accuracies before the stream's first group was learned."""
        self.baseline = self._row(accuracy)

    def record(self, after_group: str, accuracy: Mapping[str, float]) -> None:
        """R[i]: the accuracies once the stream has moved through group `after_group`."""
        self.rows[self.index[after_group]] = self._row(accuracy)

    def _row(self, accuracy: Mapping[str, float]) -> list[float]:
        missing = [g for g in self.groups if g not in accuracy]
        if missing:
            raise ValueError(f"no accuracy for groups {missing}")
        return [float(accuracy[g]) for g in self.groups]

    def metrics(self) -> dict[str, Any]:
        T, R, b = len(self.groups), self.rows, self.baseline
        complete = all(i in R for i in range(T))
        acc = sum(R[T - 1]) / T if T - 1 in R else None
        bwt = fwt = None
        if complete and T > 1:
            bwt = sum(R[T - 1][j] - R[j][j] for j in range(T - 1)) / (T - 1)
            if b is not None:
                fwt = sum(R[j - 1][j] - b[j] for j in range(1, T)) / (T - 1)
        return {
            "groups": list(self.groups),
            "matrix": [R.get(i) for i in range(T)],
            "baseline": b,
            "ACC": acc,
            "BWT": bwt,
            "FWT": fwt,
        }
