"""Transition batches from the replay store, prefetched, as tensors for the Q learners.

The learner never waits on a round trip it could overlap: a background thread
keeps `prefetch` samples in flight while the step before runs.  Priority
updates go back to the store without waiting for the reply (a lost update
only leaves a row at its old priority).
"""

from __future__ import annotations

import queue
import threading
from dataclasses import dataclass
from typing import Any, Iterator, Protocol

import numpy as np
import torch

from learners.objective import WorkerContext

KEY, WEIGHT = "_key", "_weight"


class TransitionSampler(Protocol):
    """What the replay client offers the learner (actors.replay_client.ReplayClient)."""

    def sample(self, table: str, n: int, timeout_s: float | None = None) -> Any: ...  # pyarrow.RecordBatch
    def update_priorities(self, table: str, keys: np.ndarray, priorities: np.ndarray, wait: bool = True) -> Any: ...


def transitions_to_tensors(rb: Any) -> dict[str, torch.Tensor]:
    """A sampled RecordBatch -> {obs, action, reward, next_obs, terminated, weight, key, discount} tensors."""
    n = rb.num_rows

    def matrix(name: str) -> torch.Tensor:
        col = rb.column(name)
        flat = col.flatten().to_numpy(zero_copy_only=False) if hasattr(col, "flatten") else np.asarray(col)
        return torch.from_numpy(np.array(flat, dtype=np.float32).reshape(n, -1))  # a writable copy

    names = rb.schema.names
    return {
        "obs": matrix("obs"),
        "next_obs": matrix("next_obs"),
        "action": torch.from_numpy(rb.column("action").to_numpy().astype(np.int64)),
        "reward": torch.from_numpy(rb.column("reward").to_numpy(zero_copy_only=False).astype(np.float32)),
        "terminated": torch.from_numpy(rb.column("terminated").to_numpy(zero_copy_only=False).astype(np.float32)),
        "weight": torch.from_numpy(rb.column(WEIGHT).to_numpy().astype(np.float32)) if WEIGHT in names
        else torch.ones(n),
        "key": torch.from_numpy(rb.column(KEY).to_numpy().astype(np.int64)),
        # gamma**k of a row cut short by an episode end; NaN (null, or rows written without
        # the column) means the learner's gamma**n
        "discount": torch.from_numpy(rb.column("discount").to_numpy(zero_copy_only=False).astype(np.float32))
        if "discount" in names else torch.full((n,), float("nan")),
    }


@dataclass
class ReplayTransitionSource:
    """Batches of `batch_size` transitions from `table`, sampled ahead in a thread."""

    sampler: TransitionSampler
    table: str
    batch_size: int
    # Batches fetched per round trip: one sample of k x batch_size rows is cut into k
    # batches.  A round trip to the shards costs more than a small network's update,
    # so a large k keeps sampling a small share of the learner's CPU.
    batches_per_sample: int = 32
    prefetch: int = 2
    sample_timeout_s: float = 5.0  # one attempt; below min_size the thread simply asks again
    max_wait_s: float = 300.0  # no batch for this long is an error, not a silent hang

    def batches(self, ctx: WorkerContext, seed: int) -> Iterator[dict[str, torch.Tensor]]:
        ready: queue.Queue = queue.Queue(maxsize=self.prefetch)
        stop = threading.Event()
        thread = threading.Thread(target=self._fill, args=(ready, stop), daemon=True, name="replay-prefetch")
        thread.start()
        try:
            while True:
                try:
                    item = ready.get(timeout=self.max_wait_s)
                except queue.Empty:
                    raise TimeoutError(f"replay table {self.table!r}: no batch for {self.max_wait_s:.0f}s") from None
                if isinstance(item, BaseException):
                    raise item
                for start in range(0, len(item["action"]), self.batch_size):
                    yield {k: v[start : start + self.batch_size] for k, v in item.items()}
        finally:
            stop.set()

    def _fill(self, ready: queue.Queue, stop: threading.Event) -> None:
        rows = self.batch_size * self.batches_per_sample
        while not stop.is_set():
            try:
                rb = self.sampler.sample(self.table, rows, self.sample_timeout_s)
            except TimeoutError:
                continue  # not enough rows yet, or the rate limiter wants more inserts first
            except BaseException as exc:  # surfaced in the learner's thread
                self._offer(ready, stop, exc)
                return
            if rb.num_rows:
                self._offer(ready, stop, transitions_to_tensors(rb))

    @staticmethod
    def _offer(ready: queue.Queue, stop: threading.Event, item: Any) -> None:
        """put() that gives up once the consumer has gone (a plain put blocks forever on a full queue)."""
        while not stop.is_set():
            try:
                ready.put(item, timeout=0.2)
                return
            except queue.Full:
                continue

    def update_priorities(self, keys: torch.Tensor, priorities: torch.Tensor) -> None:
        self.sampler.update_priorities(self.table, keys.numpy(), priorities.detach().double().numpy(), wait=False)
