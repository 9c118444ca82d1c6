"""A sum tree over a fixed number of slots, vectorised with numpy.

Prioritised sampling draws a batch with one descent per tree level (about
log2(capacity) numpy operations per batch, not per row); priority updates
recompute only the ancestors of the touched leaves.
"""

from __future__ import annotations

import numpy as np


class SumTree:
    def __init__(self, capacity: int):
        self.capacity = capacity
        self.size = 1 << max(1, int(np.ceil(np.log2(max(capacity, 2)))))  # leaves, a power of two
        self.tree = np.zeros(2 * self.size, dtype=np.float64)  # tree[1] is the root

    @property
    def total(self) -> float:
        return float(self.tree[1])

    def get(self, slots: np.ndarray) -> np.ndarray:
        return self.tree[self.size + np.asarray(slots, dtype=np.int64)]

    def set(self, slots: np.ndarray, values: np.ndarray) -> None:
        slots = np.asarray(slots, dtype=np.int64)
        if slots.size == 0:
            return
        nodes = self.size + slots
        self.tree[nodes] = values
        nodes = np.unique(nodes >> 1)
        while nodes[0] >= 1:
            self.tree[nodes] = self.tree[2 * nodes] + self.tree[2 * nodes + 1]
            if nodes[0] == 1:
                break
            nodes = np.unique(nodes >> 1)

    def sample(self, n: int, rng: np.random.Generator) -> np.ndarray:
        """n slots drawn with probability proportional to their value (stratified)."""
        total = self.total
        if total <= 0:
            raise ValueError("cannot sample from a sum tree whose total is 0")
        # One draw per stratum lowers variance without changing the marginals.
        targets = (np.arange(n) + rng.random(n)) * (total / n)
        nodes = np.ones(n, dtype=np.int64)
        while nodes[0] < self.size:
            left = 2 * nodes
            left_sum = self.tree[left]
            go_right = targets >= left_sum
            targets = np.where(go_right, targets - left_sum, targets)
            nodes = np.where(go_right, left + 1, left)
        slots = nodes - self.size
        # float round-off can land on an empty leaf at the right edge: step back to a live one
        empty = self.tree[nodes] <= 0
        if empty.any():
            live = np.flatnonzero(self.tree[self.size : self.size + self.capacity] > 0)
            slots[empty] = live[np.searchsorted(live, slots[empty]).clip(max=len(live) - 1)]
        return slots
