"""Joined feedback rows from the replay store, as batches for the online learner.

A `FeedbackBatch` is the columns the learner needs, in numpy (texts stay a
list of model inputs: a text, or a `(text, text_pair)` pair where the row has one): the served prediction, the logging propensity for off-policy learning
(the probability it was served with when serving explored; for a greedy
answer, propensity 1, the served model's confidence), the label or the reward, and
where the row came from (created_at, policy_version) for lineage.

`FeedbackSource` samples `rows` fresh rows per batch in a background thread
(as `replay_source.ReplayTransitionSource` does), but a quiet endpoint is not
an error here: when no batch arrives within `idle_after_s` it yields None, so
the train loop keeps turning (reports, the driver's stop flag, checkpoints)
while users are away.  Declare the feedback table `fifo`: every joined row is
handed out once, and the learner's own reservoir does the rehearsal.  A
`uniform` table works too (rows then come back more than once).
"""

from __future__ import annotations

import queue
import threading
from dataclasses import dataclass, fields
from typing import Any, Callable, Iterator, Protocol, Sequence

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc

from core.replay.table import ReplayError
from core.data.inputs import TextInput, inputs_from_columns
from learners.objective import WorkerContext

NO_LABEL = -1
CATCH_UP_WAIT_S = 0.0  # a catch-up sample takes only rows already there


class FeedbackSampler(Protocol):
    """What the replay client offers (actors.replay_client.ReplayClient.sample)."""

    def sample(self, table: str, n: int, timeout_s: float | None = None) -> Any: ...  # pyarrow.RecordBatch


@dataclass
class FeedbackBatch:
    text: list[TextInput]  # what the model reads: a text or a (text, text_pair) pair
    prediction: np.ndarray  # int64 [N]: the class the served model answered
    logged_p: np.ndarray  # float32 [N]: probability the served model gave `prediction` (nan: unknown)
    label: np.ndarray  # int64 [N]: the user's label, NO_LABEL when they only sent a reward
    reward: np.ndarray  # float32 [N]: in [0, 1]; nan when absent
    created_at: np.ndarray  # int64 [N]: microseconds since the epoch (UTC)
    policy_version: np.ndarray  # int64 [N]: the version that served the prediction

    def __len__(self) -> int:
        return len(self.text)

    def take(self, idx: Sequence[int] | np.ndarray) -> "FeedbackBatch":
        idx = np.asarray(idx, dtype=np.int64)
        return FeedbackBatch([self.text[i] for i in idx], *(getattr(self, f.name)[idx] for f in fields(self)[1:]))

    @staticmethod
    def concat(parts: Sequence["FeedbackBatch"]) -> "FeedbackBatch":
        parts = [p for p in parts if len(p)]
        if not parts:
            return empty_batch()
        return FeedbackBatch(
            [t for p in parts for t in p.text],
            *(np.concatenate([getattr(p, f.name) for p in parts]) for f in fields(FeedbackBatch)[1:]),
        )

    @staticmethod
    def from_rows(text: Sequence[TextInput], prediction: Sequence[int], logged_p: Sequence[float],
                  label: Sequence[int | None] | None = None, reward: Sequence[float | None] | None = None,
                  created_at: Sequence[int] | None = None, policy_version: Sequence[int] | None = None) -> "FeedbackBatch":
        """Plain Python rows (tests, tools); None in label/reward means absent."""
        n = len(text)
        label = [NO_LABEL] * n if label is None else [NO_LABEL if y is None else int(y) for y in label]
        reward = [np.nan] * n if reward is None else [np.nan if r is None else float(r) for r in reward]
        return FeedbackBatch(
            list(text),
            np.asarray(prediction, np.int64),
            np.asarray(logged_p, np.float32),
            np.asarray(label, np.int64),
            np.asarray(reward, np.float32),
            np.asarray(created_at if created_at is not None else np.zeros(n), np.int64),
            np.asarray(policy_version if policy_version is not None else np.zeros(n), np.int64),
        )


def empty_batch() -> FeedbackBatch:
    return FeedbackBatch.from_rows([], [], [])


def feedback_to_batch(rb: pa.RecordBatch) -> FeedbackBatch:
    """A sampled RecordBatch of the feedback schema -> FeedbackBatch."""
    n = rb.num_rows
    pred = rb.column("prediction").to_numpy(zero_copy_only=False).astype(np.int64)
    probs = rb.column("probs")
    if isinstance(probs, pa.ChunkedArray):
        probs = probs.combine_chunks()
    # probs[i][pred[i]] without a Python loop: offsets into the flat value buffer
    offsets = probs.offsets.to_numpy()[:n + 1] if n else np.zeros(1, np.int64)
    lengths = np.diff(offsets)
    flat = probs.values.to_numpy(zero_copy_only=False).astype(np.float32) if n else np.zeros(0, np.float32)
    ok = (pred >= 0) & (pred < lengths)
    logged = np.full(n, np.nan, np.float32)
    logged[ok] = flat[offsets[:-1][ok] + pred[ok]]
    if "propensity" in rb.schema.names:  # an explored answer's true propensity replaces the confidence
        served = pc.fill_null(rb.column("propensity"), np.float32(1.0)).to_numpy(zero_copy_only=False)
        explored = served < 1.0
        logged[explored] = served[explored]
    pairs = rb.column("text_pair").to_pylist() if "text_pair" in rb.schema.names else None
    return FeedbackBatch(
        inputs_from_columns(rb.column("text").to_pylist(), pairs),
        pred,
        logged,
        pc.fill_null(rb.column("label"), NO_LABEL).to_numpy(zero_copy_only=False).astype(np.int64),
        pc.fill_null(rb.column("reward"), np.float32(np.nan)).to_numpy(zero_copy_only=False).astype(np.float32),
        rb.column("created_at").cast(pa.int64()).to_numpy(zero_copy_only=False).astype(np.int64),
        rb.column("policy_version").to_numpy(zero_copy_only=False).astype(np.int64),
    )


@dataclass
class FeedbackSource:
    """Fresh feedback rows from `table`, `rows` per batch, sampled ahead in a thread."""

    sampler: FeedbackSampler
    table: str
    rows: int  # fresh rows per batch (OnlineObjective's batch_size minus its rehearsal share)
    # Batches per round trip.  1 by default: on a fifo table a sample waits until all its
    # rows exist, so asking for k batches at once would delay learning by k batches of traffic.
    batches_per_sample: int = 1
    prefetch: int = 2
    sample_timeout_s: float = 2.0  # one attempt; an empty table simply gets asked again
    idle_after_s: float = 1.0  # no batch for this long: yield None (the loop stays responsive)
    # When the learner is behind the stream, one batch of up to `catch_up` x `rows` rows: the rows
    # are already waiting, so asking for more costs no wait, and a learner whose cheap part
    # (wide_deep's wide model) can learn them all keeps pace with traffic.  1: never.
    catch_up: int = 1
    # A sampled RecordBatch -> what the batches hold (anything with len() and take()): the
    # classifier's FeedbackBatch, or another table's rows (learners/completion_source.py)
    convert: Callable[[pa.RecordBatch], Any] = feedback_to_batch

    def batches(self, ctx: WorkerContext, seed: int) -> Iterator[FeedbackBatch | None]:
        ready: queue.Queue = queue.Queue(maxsize=self.prefetch)
        stop = threading.Event()
        thread = threading.Thread(target=self._fill, args=(ready, stop), daemon=True, name="feedback-prefetch")
        thread.start()
        try:
            while True:
                try:
                    item = ready.get(timeout=self.idle_after_s)
                except queue.Empty:
                    yield None
                    continue
                if isinstance(item, BaseException):
                    raise item
                step = self.rows * self.catch_up  # a catch-up sample stays one batch
                for start in range(0, len(item), step):
                    yield item.take(np.arange(start, min(start + step, len(item))))
        finally:
            stop.set()

    def _fill(self, ready: queue.Queue, stop: threading.Event) -> None:
        n = self.rows * self.batches_per_sample
        while not stop.is_set():
            try:
                rb = self._waiting_rows(n) if self.catch_up > 1 else None
                if rb is None:
                    rb = self.sampler.sample(self.table, n, self.sample_timeout_s)
            except TimeoutError:
                continue  # below min_size / fifo short of n rows: users are quiet, ask again
            except BaseException as exc:  # surfaced in the learner's thread
                _put(ready, exc, stop)
                return
            if rb.num_rows:
                _put(ready, self.convert(rb), stop)


    def _waiting_rows(self, n: int) -> Any | None:
        """`catch_up` times n rows if that many are already waiting on the table, else None."""
        try:
            return self.sampler.sample(self.table, n * self.catch_up, CATCH_UP_WAIT_S)
        except (TimeoutError, ReplayError):  # fewer waiting (or more than the table allows): the plain sample
            return None


def _put(ready: queue.Queue, item: Any, stop: threading.Event) -> None:
    """Put unless the consumer has gone (a blocked put would keep the thread alive forever)."""
    while not stop.is_set():
        try:
            ready.put(item, timeout=0.5)
            return
        except queue.Full:
            continue


class Reservoir:
    """A bounded, uniform sample of every feedback row the learner has seen (Vitter's Algorithm R).

    Rehearsal draws from it so a drifting stream does not erase what older
    traffic taught (experience replay against catastrophic forgetting); the
    bound keeps memory and checkpoints small however long the run.
    """

    _NUMERIC = ("prediction", "logged_p", "label", "reward", "created_at", "policy_version")

    def __init__(self, capacity: int):
        if capacity < 1:
            raise ValueError(f"reservoir capacity must be >= 1, got {capacity}")
        self.capacity = capacity
        self.seen = 0
        self.rows = empty_batch()

    def __len__(self) -> int:
        return len(self.rows)

    def add(self, batch: FeedbackBatch, rng: np.random.Generator) -> None:
        room = max(0, self.capacity - len(self.rows))
        if room:
            self.rows = FeedbackBatch.concat([self.rows, batch.take(np.arange(min(room, len(batch))))])
            self.seen += min(room, len(batch))
        for i in range(room, len(batch)):  # full: row number `seen` replaces a slot with probability K/(seen+1)
            j = int(rng.integers(0, self.seen + 1))
            self.seen += 1
            if j < self.capacity:
                self.rows.text[j] = batch.text[i]
                for name in self._NUMERIC:
                    getattr(self.rows, name)[j] = getattr(batch, name)[i]

    def sample(self, k: int, rng: np.random.Generator) -> FeedbackBatch:
        k = min(k, len(self.rows))
        if k <= 0:
            return empty_batch()
        return self.rows.take(rng.choice(len(self.rows), size=k, replace=False))

    # checkpoint state: plain lists and tensors only (the train loop loads with weights_only=True)
    def state_dict(self) -> dict[str, Any]:
        import torch

        return {"capacity": self.capacity, "seen": self.seen, "text": list(self.rows.text),
                **{name: torch.from_numpy(getattr(self.rows, name).copy()) for name in self._NUMERIC}}

    def load_state_dict(self, state: dict[str, Any]) -> None:
        self.seen = int(state["seen"])
        self.rows = FeedbackBatch(list(state["text"]), *(np.asarray(state[name].numpy()) for name in self._NUMERIC))
        if len(self.rows) > self.capacity:  # restored into a smaller reservoir: keep a uniform subset
            self.rows = self.rows.take(np.sort(np.random.default_rng(self.seen).choice(len(self.rows), self.capacity, replace=False)))
