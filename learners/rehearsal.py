"""The online learner's rehearsal buffer, balanced over groups and over time.

A uniform reservoir (learners/feedback_source.py `Reservoir`) keeps every row
seen with the same chance, so a group the stream dwelt on crowds out one it
passed quickly, and rehearsal draws follow the same proportions.  Here the
rows are kept in strata, one per (group, era): a group is the row's group in
the loop's labeled data (looked up by its text; "" for a text the data does not
hold), an era every `era_rows` rows of the stream.  The capacity is shared out
by water-filling: each group an equal share (a group with fewer rows keeps
all of them and leaves the rest to the others), and within a group each era
an equal share of the group's.  Each stratum is a reservoir of its own rows,
shrunk to a uniform subset when its share falls as new strata arrive.  A
rehearsal draw of k rows is shared out the same way: equal over the groups
held, equal over a group's eras, uniform within a stratum.
"""

from __future__ import annotations

from typing import Any, Callable, Mapping

import numpy as np

from core.data.inputs import TextInput
from learners.feedback_source import FeedbackBatch, Reservoir, empty_batch


def fair_shares(demands: list[int], total: int) -> list[int]:
    """Split `total` as evenly as the demands allow (max-min fair): no share above its demand,
    what a small demand leaves goes to the others."""
    shares = [0] * len(demands)
    left = max(0, int(total))
    order = sorted(range(len(demands)), key=lambda i: demands[i])
    for k, i in enumerate(order):
        shares[i] = min(int(demands[i]), left // (len(order) - k))
        left -= shares[i]
    for i in sorted(order, key=lambda i: demands[i] - shares[i], reverse=True):  # the rounding's remainder
        if left <= 0:
            break
        extra = min(left, int(demands[i]) - shares[i])
        shares[i] += extra
        left -= extra
    return shares


class BalancedMemory:
    """Drop-in for `Reservoir` (add, sample, len, state_dict): strata by (group, era), balanced."""

    def __init__(self, capacity: int, era_rows: int, groups: Mapping[TextInput, str] | None = None):
        if capacity < 1 or era_rows < 1:
            raise ValueError(f"capacity and era_rows must be >= 1, got {capacity}, {era_rows}")
        self.capacity, self.era_rows = capacity, era_rows
        self.group_of: Callable[[TextInput], str] = (lambda t: groups.get(t, "")) if groups else (lambda t: "")
        self.strata: dict[tuple[str, int], Reservoir] = {}
        self.seen = 0  # rows of the stream so far: the era clock

    def __len__(self) -> int:
        return sum(len(r) for r in self.strata.values())

    def held(self) -> dict[str, int]:
        """Rows held per group (what the balance looks like, for tests and figures)."""
        out: dict[str, int] = {}
        for (group, _), r in self.strata.items():
            out[group] = out.get(group, 0) + len(r)
        return out

    def add(self, batch: FeedbackBatch, rng: np.random.Generator) -> None:
        if not len(batch):
            return
        era = self.seen // self.era_rows
        keys = [self.group_of(t) for t in batch.text]
        for group in dict.fromkeys(keys):
            stratum = self.strata.get((group, era))
            if stratum is None:
                stratum = self.strata[(group, era)] = Reservoir(self.capacity)
            elif len(stratum) == stratum.seen:  # it holds every row it saw: it takes these too, and
                stratum.capacity = self.capacity  # the rebalance keeps a uniform subset if need be
            stratum.add(batch.take([i for i, k in enumerate(keys) if k == group]), rng)
        self.seen += len(batch)
        self._rebalance(rng)

    def _rebalance(self, rng: np.random.Generator) -> None:
        for key, share in self._split({k: r.seen for k, r in self.strata.items()}, self.capacity).items():
            r = self.strata[key]
            r.capacity = share  # its next rows compete for this many places
            if len(r) > share:  # a uniform subset of what it held
                r.rows = r.rows.take(np.sort(rng.choice(len(r), size=share, replace=False)))

    def _split(self, demands: dict[tuple[str, int], int], total: int) -> dict[tuple[str, int], int]:
        """Water-filling over groups, then over each group's eras."""
        groups: dict[str, list[tuple[str, int]]] = {}
        for key in demands:
            groups.setdefault(key[0], []).append(key)
        names = list(groups)
        per_group = fair_shares([sum(demands[k] for k in groups[g]) for g in names], total)
        out: dict[tuple[str, int], int] = {}
        for g, share in zip(names, per_group):
            keys = groups[g]
            out.update(zip(keys, fair_shares([demands[k] for k in keys], share)))
        return out

    def sample(self, k: int, rng: np.random.Generator) -> FeedbackBatch:
        k = min(k, len(self))
        if k <= 0:
            return empty_batch()
        counts = self._split({key: len(r) for key, r in self.strata.items()}, k)
        parts = [self.strata[key].sample(n, rng) for key, n in counts.items() if n > 0]
        return FeedbackBatch.concat(parts)

    # checkpoint state: plain lists, strings and tensors (the train loop loads with weights_only=True)
    def state_dict(self) -> dict[str, Any]:
        return {"balanced": True, "capacity": self.capacity, "era_rows": self.era_rows, "seen": self.seen,
                "strata": [{"group": g, "era": e, **r.state_dict()} for (g, e), r in self.strata.items()]}

    def load_state_dict(self, state: dict[str, Any]) -> None:
        self.strata = {}
        if not state.get("balanced"):  # a uniform reservoir's rows: one stratum of the first era
            r = Reservoir(self.capacity)
            r.load_state_dict(state)
            self.strata[("", 0)], self.seen = r, int(state["seen"])
        else:
            self.seen = int(state["seen"])
            for s in state["strata"]:
                r = Reservoir(max(1, int(s["capacity"])))
                r.load_state_dict(s)
                r.capacity = int(s["capacity"])
                self.strata[(str(s["group"]), int(s["era"]))] = r
        self._rebalance(np.random.default_rng(self.seen))


def new_memory(capacity: int, buffer: str, era_rows: int, groups: Mapping[TextInput, str] | None) -> Any:
    """The learner's rehearsal buffer as `learning.memory.buffer` says."""
    if buffer == "balanced":
        return BalancedMemory(capacity, era_rows, groups)
    return Reservoir(capacity)


def restore_memory(memory: Any, state: dict[str, Any]) -> None:
    """Load a checkpoint's buffer into `memory`, whichever kind wrote it."""
    if isinstance(memory, Reservoir) and state.get("balanced"):  # balanced -> uniform: every row held
        rows = [FeedbackBatch(list(s["text"]), *(np.asarray(s[n].numpy()) for n in Reservoir._NUMERIC))
                for s in state["strata"]]
        merged = FeedbackBatch.concat(rows)
        keep = min(len(merged), memory.capacity)
        memory.rows = merged.take(np.sort(np.random.default_rng(0).choice(len(merged), keep, replace=False)))
        memory.seen = int(state["seen"])
        return
    memory.load_state_dict(state)
