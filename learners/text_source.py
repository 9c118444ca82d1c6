"""Where MLM batches come from: the corpus through Ray Data, or live text from the replay store.

Both yield [batch, seq_len] int64 blocks of packed token ids (no padding), so
the MLM objective and the train loop cannot tell them apart: continual MLM on
request text is the same loop with another source.
"""

from __future__ import annotations

import time
from dataclasses import dataclass
from typing import Any, Iterator, Protocol

import numpy as np
import torch

from core.models.tokenizer import encode_texts, tokenizer_from_files
from learners.objective import WorkerContext

# ray.data.from_numpy names its tensor column "data".
BLOCK_COLUMN = "data"


@dataclass
class RayDataSource:
    """This worker's shard of a Ray Data dataset of packed blocks, epoch after epoch.

    Rows come from Ray Data in large chunks (one hand-off per `fetch_rows`,
    prefetched in the background) and are shuffled and cut into batches
    locally: per-batch hand-offs cost more than a small model's step on CPU.
    """

    dataset: str
    batch_size: int
    fetch_rows: int = 1024

    def batches(self, ctx: WorkerContext, seed: int) -> Iterator[torch.Tensor]:
        import ray.train

        shard = ray.train.get_dataset_shard(self.dataset)
        if shard is None:
            raise RuntimeError(f"no dataset {self.dataset!r} was given to the trainer")
        epoch = 0
        carry = np.zeros((0, 0), dtype=np.int64)
        while True:
            count = 0
            rng = np.random.default_rng(seed * 7919 + epoch)
            for chunk in shard.iter_batches(batch_size=max(self.fetch_rows, self.batch_size), batch_format="numpy",
                                            prefetch_batches=2):
                rows = np.asarray(chunk[BLOCK_COLUMN], dtype=np.int64)
                rows = rows[rng.permutation(len(rows))]
                if len(carry):
                    rows = np.concatenate([carry, rows])
                full = len(rows) // self.batch_size * self.batch_size
                for start in range(0, full, self.batch_size):
                    count += 1
                    yield torch.from_numpy(rows[start : start + self.batch_size])
                carry = rows[full:]
            if count == 0:
                raise RuntimeError(f"dataset {self.dataset!r}: this worker's shard holds less than one batch")
            epoch += 1


class TextSampler(Protocol):
    """What the replay store client offers: a batch of rows of `table` with a `text` column."""

    def sample(self, table: str, n: int, timeout_s: float) -> Any: ...  # -> pyarrow.RecordBatch


class BlockPacker:
    """Token ids in, fixed [seq_len] blocks out: [CLS] t t [SEP] t ... ; the remainder waits for more."""

    def __init__(self, seq_len: int, cls_id: int, sep_id: int):
        self.seq_len, self.cls_id, self.sep_id = seq_len, cls_id, sep_id
        self._stream = np.zeros(0, dtype=np.int64)

    def add(self, ids: list[list[int]]) -> np.ndarray:
        pieces = [self._stream] + [np.asarray(list(x) + [self.sep_id], dtype=np.int64) for x in ids if len(x)]
        stream = np.concatenate(pieces)
        width = self.seq_len - 1
        n = len(stream) // width
        self._stream = stream[n * width :]
        body = stream[: n * width].reshape(n, width)
        return np.concatenate([np.full((n, 1), self.cls_id, dtype=np.int64), body], axis=1)


@dataclass
class ReplayTextSource:
    """Live request text sampled from a replay table, tokenized and packed on the worker."""

    sampler: TextSampler
    table: str
    batch_size: int
    seq_len: int
    tokenizer_files: dict[str, bytes]
    texts_per_sample: int = 256
    sample_timeout_s: float = 5.0
    max_wait_s: float = 300.0  # give up (an error, not a hang) when no text arrives for this long
    # (the id opening a block, the id after each text), as the corpus's blocks were packed;
    # None: the tokenizer's [CLS] and [SEP] (masked-LM's layout)
    bounds: tuple[int, int] | None = None

    def batches(self, ctx: WorkerContext, seed: int) -> Iterator[torch.Tensor]:
        tok = tokenizer_from_files(self.tokenizer_files, check=None)  # checked for its objective before Ray started
        start, end = self.bounds or (tok.cls_token_id, tok.sep_token_id)
        packer = BlockPacker(self.seq_len, start, end)
        ready = np.zeros((0, self.seq_len), dtype=np.int64)
        while True:
            waited_since = time.monotonic()
            while len(ready) < self.batch_size:
                texts = self._sample_texts()
                if texts:
                    waited_since = time.monotonic()
                    ready = np.concatenate([ready, packer.add(encode_texts(tok, texts))])
                elif time.monotonic() - waited_since > self.max_wait_s:
                    raise TimeoutError(f"replay table {self.table!r}: no text for {self.max_wait_s:.0f}s")
            yield torch.from_numpy(ready[: self.batch_size].copy())
            ready = ready[self.batch_size :]

    def _sample_texts(self) -> list[str]:
        try:
            batch = self.sampler.sample(self.table, self.texts_per_sample, self.sample_timeout_s)
        except TimeoutError:
            return []  # the table is below its min_size or rate-limited: ask again
        if "text" not in batch.schema.names:
            raise ValueError(f"replay table {self.table!r} has no 'text' column (columns: {batch.schema.names})")
        return [t for t in batch.column("text").to_pylist() if t]


@dataclass
class ReplayTextBatches:
    """Batches of raw request texts sampled from a replay table, at most `max_batches_per_s`:
    a learner that watches a loop must leave that loop the machine."""

    sampler: TextSampler
    table: str
    batch_size: int
    max_batches_per_s: float
    sample_timeout_s: float = 5.0

    def batches(self, ctx: WorkerContext, seed: int) -> Iterator[list[str]]:
        gap = 1.0 / self.max_batches_per_s
        last = 0.0
        while True:
            try:
                batch = self.sampler.sample(self.table, self.batch_size, self.sample_timeout_s)
            except TimeoutError:
                continue  # no text yet (below the table's min_size): ask again
            texts = [t for t in batch.column("text").to_pylist() if t]
            if not texts:
                continue
            wait = last + gap - time.monotonic()
            if wait > 0:
                time.sleep(wait)
            last = time.monotonic()
            yield texts
