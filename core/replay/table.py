"""One replay table on one shard: columnar rows, a sampler, a rate limiter, a segment log.

Rows get a sequence number `seq` in insertion order and live in columnar
rings at slot = seq % capacity (`core.replay.columns`); the live rows are seq
in [head, tail), so removing the oldest is moving `head`.  Per-row
bookkeeping (priority, times sampled, policy version) sits in numpy rings
indexed the same way.
"""

from __future__ import annotations

import logging
import threading
import time
from pathlib import Path
from typing import Any

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc

from core.replay.columns import ColumnRings
from core.config.replay import TableSection
from core.replay.ratelimit import RateLimiter
from core.replay.object_log import open_log
from core.replay.sumtree import SumTree
from core.data.schemas import SchemaError, schema_for, to_record_batch

log = logging.getLogger(__name__)

KEY, PROBABILITY, TIMES_SAMPLED = "_key", "_probability", "_times_sampled"


class ReplayError(ValueError):
    """Bad use of a table (oversize batch, bad priorities, impossible sample)."""


class ReplayTimeout(TimeoutError):
    """The rate limiter or min_size kept a call waiting past its timeout."""


class ReplayTable:
    def __init__(self, name: str, cfg: TableSection, directory: str | Path | None = None, *,
                 segment_rows: int = 65_536, fsync: bool = False, seed: int | None = None):
        self.name, self.cfg = name, cfg
        self.schema = schema_for(cfg.kind, obs_dim=cfg.obs_dim) if cfg.kind == "transitions" else schema_for(cfg.kind)
        self.cond = threading.Condition(threading.RLock())
        self.limiter = RateLimiter(cfg.samples_per_insert, cfg.min_size, cfg.resolved_error_buffer())
        self.rng = np.random.default_rng(seed)
        cap = cfg.capacity
        self.index: dict[str, int] = {}  # id -> seq, live rows only: makes add idempotent
        self.rows = ColumnRings(self.schema, cap)
        self.head = self.tail = 0
        self.version = np.zeros(cap, dtype=np.int64)
        self.times_sampled = np.zeros(cap, dtype=np.int32)
        self.tree = SumTree(cap) if cfg.sampler == "prioritized" else None
        self.max_priority = 1.0
        self.newest_version: int | None = None
        self.stats = {"inserts": 0, "samples": 0, "duplicates": 0}
        self._rate_mark = (time.monotonic(), 0, 0)
        self._head_written = 0.0
        self.log = open_log(directory, self.schema, segment_rows, fsync) if directory is not None else None
        if self.log is not None:
            self._recover()

    @property
    def size(self) -> int:
        return self.tail - self.head

    # ---- add -----------------------------------------------------------------
    def add(self, batch: Any, timeout_s: float | None = None, paced: bool = True) -> dict[str, int]:
        """Validate, write durably, then make visible. Returns the ack: accepted / duplicates.
        `paced` False: the rate limiter does not hold these rows (a client's steps: a user is not
        made to wait for the learner); they still count, so paced writers yield to them."""
        rb = to_record_batch(self.name, self.schema, batch)
        limit = min(self.cfg.max_batch_rows, self.cfg.capacity)
        if rb.num_rows > limit:
            raise ReplayError(f"table {self.name!r}: batch of {rb.num_rows} rows is over the limit of {limit}")
        if rb.num_rows and not pc.all(pc.equal(rb.column("table"), self.name)).as_py():
            raise SchemaError(self.name, "table", f"every row must name table {self.name!r}")
        with self.cond:
            if paced:
                self._wait(lambda: self.limiter.can_insert(self.size), timeout_s,
                           "insert (rate limiter: samplers are behind)")
            rb, ids, dups = self._drop_duplicates(rb)
            if rb.num_rows:
                if self.log is not None:
                    self.log.append(self.tail, rb)  # durable before it is visible or acknowledged
                self._insert(self.tail, rb, ids)
                self.limiter.record_insert(rb.num_rows)
                self.cond.notify_all()
            self.stats["inserts"] += rb.num_rows
            self.stats["duplicates"] += dups
            return {"accepted": rb.num_rows, "duplicates": dups}

    def _drop_duplicates(self, rb: pa.RecordBatch) -> tuple[pa.RecordBatch, list[str], int]:
        ids = rb.column("id").to_pylist()
        unique = dict.fromkeys(ids)
        if len(unique) == len(ids) and self.index.keys().isdisjoint(unique):
            return rb, ids, 0  # the common case: one pass, no copies
        seen: set[str] = set()
        keep = []
        for i in ids:
            keep.append(i not in self.index and i not in seen)
            seen.add(i)
        kept = rb.filter(pa.array(keep))
        return kept, [i for i, k in zip(ids, keep) if k], len(ids) - kept.num_rows

    def _insert(self, seq: int, rb: pa.RecordBatch, ids: list[str]) -> None:
        n, cap = rb.num_rows, self.cfg.capacity
        self._advance_head(seq + n - cap)  # evict first: the new rows reuse the evicted slots
        self.index.update(zip(ids, range(seq, seq + n)))
        slots = self.rows.put(seq, rb, ids)
        self.tail = seq + n
        versions = rb.column("policy_version").to_numpy()
        self.version[slots] = versions
        self.times_sampled[slots] = 0
        newest = int(versions.max())
        self.newest_version = newest if self.newest_version is None else max(self.newest_version, newest)
        if self.tree is not None:
            self.tree.set(slots, np.full(n, self.max_priority**self.cfg.alpha))

    # ---- remove --------------------------------------------------------------
    def _advance_head(self, new_head: int) -> None:
        """Remove rows with seq < new_head (oldest first), in memory and on disk."""
        if new_head <= self.head:
            return
        for row_id in self.rows.ids(np.arange(self.head, new_head) % self.cfg.capacity):
            self.index.pop(row_id, None)
        if self.tree is not None:
            self.tree.set(np.arange(self.head, new_head) % self.cfg.capacity, 0.0)
        self.head = new_head
        if self.log is not None and not self.log.drop_before(self.head) and self.cfg.sampler == "fifo":
            # consumed queue rows: remember the head (at most once a second) so a
            # restart re-delivers little; delivery stays at-least-once
            if time.monotonic() - self._head_written > 1.0:
                self.log.write_head(self.head)
                self._head_written = time.monotonic()

    def _drop_stale_head(self) -> None:
        lag = self.cfg.max_policy_lag
        if lag is None or self.newest_version is None or not self.size:
            return
        floor = self.newest_version - lag
        window = min(self.size, 65_536)
        stale = self.version[np.arange(self.head, self.head + window) % self.cfg.capacity] < floor
        fresh_at = int(np.argmin(stale)) if not stale.all() else window
        self._advance_head(self.head + fresh_at)

    def cutoff(self) -> int:
        """Stop serving the rows inserted so far (the world they were acted in has changed); returns
        how many were removed.

        They are removed, in memory and on disk (the recorded head moves past them, so a restarted
        shard does not bring them back): every sampler then draws only rows added after the call.
        The table is empty, so samples wait as they do at the start, until `min_size` new rows are
        in, while adds go on (the rate limiter lets inserts through below `min_size`).
        """
        with self.cond:
            removed = self.size
            self._advance_head(self.tail)
            if self.log is not None:
                self.log.write_head(self.head)
            self.cond.notify_all()
            return removed

    # ---- sample --------------------------------------------------------------
    def sample(self, n: int, timeout_s: float | None = None) -> pa.RecordBatch:
        """n rows with `_key`, `_probability` and `_times_sampled` columns added.

        With `max_policy_lag`, rows too stale are left out, so a sample may hold fewer rows.
        """
        self._check_sample_size(n)
        need = n if self.cfg.sampler == "fifo" else 1
        deadline = None if timeout_s is None else time.monotonic() + timeout_s
        with self.cond:
            while True:
                left = None if deadline is None else max(0.0, deadline - time.monotonic())
                self._wait(lambda: self.limiter.can_sample(n, self.size) and self.size >= need, left,
                           f"sample (size {self.size}, min_size {self.cfg.min_size}, or the rate limiter: inserts are behind)")
                self._drop_stale_head()
                if self.size:  # dropping stale rows may have emptied the table: wait again
                    break
            # a queue short of n fresh rows after the stale drop hands over what it has
            seqs, probs, consumed = self._pick(min(n, self.size) if self.cfg.sampler == "fifo" else n)
            slots = seqs % self.cfg.capacity
            rows = self.rows.take(slots)
            np.add.at(self.times_sampled, slots, 1)
            times = self.times_sampled[slots]
            self.limiter.record_sample(consumed)
            self.stats["samples"] += len(seqs)
            if self.cfg.sampler == "fifo":
                self._advance_head(self.head + consumed)  # stale rows picked are consumed too
            self.cond.notify_all()
        extra = [pa.array(seqs, pa.int64()), pa.array(probs, pa.float64()), pa.array(times, pa.int32())]
        return pa.RecordBatch.from_arrays(rows.columns + extra, names=rows.schema.names + [KEY, PROBABILITY, TIMES_SAMPLED])

    def _check_sample_size(self, n: int) -> None:
        if n < 1:
            raise ReplayError(f"table {self.name!r}: sample size must be >= 1, got {n}")
        if n > self.limiter.max_sample_rows():
            raise ReplayError(
                f"table {self.name!r}: sample of {n} rows exceeds the rate limiter window "
                f"({self.limiter.max_sample_rows():g}); raise error_buffer or sample less"
            )
        if self.cfg.sampler != "fifo":
            return
        if n > self.cfg.capacity:
            raise ReplayError(f"table {self.name!r}: fifo sample of {n} rows > capacity {self.cfg.capacity}")
        if self.cfg.samples_per_insert is not None and n > self.limiter.max_diff:
            # a rate-limited queue never holds more than about max_diff rows: n more would wait forever
            raise ReplayError(
                f"table {self.name!r}: fifo sample of {n} rows can never be met by a queue the rate limiter "
                f"caps near {self.limiter.max_diff:g} rows; sample less or raise error_buffer"
            )

    def _pick(self, n: int) -> tuple[np.ndarray, np.ndarray, int]:
        """(seqs, probabilities, rows consumed by the limiter)."""
        if self.cfg.sampler == "fifo":
            seqs, probs = np.arange(self.head, self.head + n), np.ones(n)
        elif self.cfg.sampler == "uniform":
            seqs = self.rng.integers(self.head, self.tail, n)
            probs = np.full(n, 1.0 / self.size)
        else:
            slots = self.tree.sample(n, self.rng)
            cap = self.cfg.capacity
            seqs = self.head + (slots - self.head % cap) % cap
            probs = self.tree.get(slots) / self.tree.total
        if self.cfg.max_policy_lag is not None and self.newest_version is not None:
            fresh = self.version[seqs % self.cfg.capacity] >= self.newest_version - self.cfg.max_policy_lag
            seqs, probs = seqs[fresh], probs[fresh]  # too stale to learn from: dropped from this sample
        return seqs, probs, n

    # ---- priorities, info, export -------------------------------------------
    def update_priorities(self, keys: np.ndarray, priorities: np.ndarray) -> int:
        """Set priorities of rows still live; returns how many were updated."""
        if self.tree is None:
            raise ReplayError(f"table {self.name!r} uses the {self.cfg.sampler!r} sampler, not prioritized")
        keys, priorities = np.asarray(keys, np.int64), np.asarray(priorities, np.float64)
        if keys.shape != priorities.shape:
            raise ReplayError(f"table {self.name!r}: {len(keys)} keys but {len(priorities)} priorities")
        if not np.isfinite(priorities).all() or (priorities < 0).any():
            raise ReplayError(f"table {self.name!r}: priorities must be finite and >= 0")
        with self.cond:
            live = (keys >= self.head) & (keys < self.tail)
            keys, priorities = keys[live], priorities[live]
            if len(keys):
                self.tree.set(keys % self.cfg.capacity, (priorities + 1e-6) ** self.cfg.alpha)
                self.max_priority = max(self.max_priority, float(priorities.max()))
            return int(live.sum())

    def info(self) -> dict[str, Any]:
        with self.cond:
            now, inserts, samples = time.monotonic(), self.stats["inserts"], self.stats["samples"]
            t0, i0, s0 = self._rate_mark
            dt = max(now - t0, 1e-9)
            self._rate_mark = (now, inserts, samples)
            live = np.arange(self.head, self.tail) % self.cfg.capacity
            versions = self.version[live] if len(live) else None
            return {
                "size": self.size,
                "capacity": self.cfg.capacity,
                "sampler": self.cfg.sampler,
                "inserts": inserts,
                "samples": samples,
                "duplicates": self.stats["duplicates"],
                "inserts_per_s": (inserts - i0) / dt,
                "samples_per_s": (samples - s0) / dt,
                "oldest_policy_version": int(versions.min()) if versions is not None else None,
                "newest_policy_version": int(versions.max()) if versions is not None else None,
                "disk_bytes": self.log.disk_bytes() if self.log is not None else 0,
            }

    def export(self) -> pa.Table:
        """The live rows, oldest first."""
        with self.cond:
            return pa.Table.from_batches([self.rows.take(np.arange(self.head, self.tail) % self.cfg.capacity)])

    def close(self) -> None:
        with self.cond:
            if self.log is not None:
                self.log.close()

    # ---- internals -----------------------------------------------------------
    def _wait(self, ready, timeout_s: float | None, what: str) -> None:
        if not self.cond.wait_for(ready, timeout=timeout_s):
            raise ReplayTimeout(f"table {self.name!r}: timed out after {timeout_s}s waiting to {what}")

    def _skip_gap(self, seq: int) -> None:
        """Recovery found rows missing before `seq` (a lost segment): the rings hold one
        contiguous run, so the rows before the gap leave memory (their files stay on disk
        until evicted as usual) and the newer rows after it are served."""
        log.warning("replay table %r: rows %d..%d are missing on disk; serving from %d",
                    self.name, self.tail, seq, seq)
        for row_id in self.rows.ids(np.arange(self.head, self.tail) % self.cfg.capacity):
            self.index.pop(row_id, None)
        if self.tree is not None:
            self.tree.set(np.arange(self.head, self.tail) % self.cfg.capacity, 0.0)
        self.head = self.tail = seq

    def _recover(self) -> None:
        head = self.log.read_head()
        # seq carries on from the recorded head even when nothing is recovered, so new
        # segments are never named below it (and deleted as "evicted" by the next recovery)
        self.head = self.tail = head
        recovered = 0
        for seq, rb in self.log.recover():
            if seq + rb.num_rows <= head:
                continue
            if seq < head:
                rb, seq = rb.slice(head - seq), head
            if recovered == 0:
                self.head = self.tail = seq
            elif seq > self.tail:
                self._skip_gap(seq)
            self._insert(seq, rb, rb.column("id").to_pylist())
            recovered += rb.num_rows
        # Start the limiter balanced: recovered rows count as min_size inserts, not as
        # a backlog that would block actors until learners re-sample all of them.
        self.limiter.record_insert(min(self.size, self.cfg.min_size))
