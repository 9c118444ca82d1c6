"""Replay tables are declared up front, with their flow control, and checked at build time.

Like Reverb: a table has a capacity, a sampler, a remover (oldest first), a
minimum size before sampling and a samples-per-insert rate limiter with an
error buffer.  A declaration that could only deadlock is refused here, with
the reason, instead of hanging a learner at run time.
"""

from __future__ import annotations

import math
from typing import Literal

from pydantic import Field, model_validator

from core.config.base import NAME_PATTERN, Section

Sampler = Literal["uniform", "prioritized", "fifo"]


class TableSection(Section):
    # the rows it holds (core/data/schemas.py)
    kind: Literal["transitions", "text", "feedback", "completions", "decisions"] = "transitions"
    # Observation width for transitions (fixed-size columns); None = variable length.
    obs_dim: int | None = Field(default=None, ge=1)
    capacity: int = Field(default=100_000, ge=1)  # rows; the oldest go first beyond it
    sampler: Sampler = "uniform"  # uniform, prioritized, or fifo (each row handed out once)
    # Prioritized replay (Schaul et al.): P(i) = p_i^alpha / sum_k p_k^alpha,
    # importance weight w_i = (N * P(i))^-beta / max_j w_j.
    alpha: float = Field(default=0.6, ge=0)
    beta: float = Field(default=0.4, ge=0, le=1)  # prioritized: the importance weights' exponent
    remover: Literal["oldest"] = "oldest"  # which row goes when the table is full
    min_size: int = Field(default=1, ge=1)  # rows before the first sample
    # Rate limiter (Reverb's SampleToInsertRatio); None = no limit.
    samples_per_insert: float | None = Field(default=None, gt=0)
    error_buffer: float | None = Field(default=None, gt=0)  # how far inserts and samples may drift apart; None: Reverb's
    # Drop rows whose policy_version lags the newest seen by more than this.
    max_policy_lag: int | None = Field(default=None, ge=0)
    # Largest batch one add may carry.
    max_batch_rows: int = Field(default=65_536, ge=1)
    # fsync each acknowledged add (survives a power cut, costs insert rate); None: the table
    # kind's default, which is on for feedback, completions and decisions (a client was told its feedback
    # is stored) and replay.fsync for the others.
    fsync: bool | None = None

    @model_validator(mode="after")
    def _cannot_deadlock(self) -> "TableSection":
        problems = deadlock_reasons(self)
        if problems:
            raise ValueError("; ".join(problems))
        return self

    def resolved_fsync(self, default: bool) -> bool:
        """This table's fsync: its own setting, else on for feedback, else `default` (replay.fsync)."""
        if self.fsync is not None:
            return self.fsync
        return True if self.kind in ("feedback", "completions", "decisions") else default

    def resolved_error_buffer(self) -> float:
        """Reverb's default: wide enough that one insert or one sample always fits."""
        if self.error_buffer is not None:
            return self.error_buffer
        spi = self.samples_per_insert or 1.0
        return max(1.0, spi) * max(self.min_size, 100)


def deadlock_reasons(t: TableSection) -> list[str]:
    out = []
    if t.min_size > t.capacity:
        out.append(f"min_size {t.min_size} > capacity {t.capacity}: the table can never hold enough rows to sample")
    if t.sampler == "fifo" and t.samples_per_insert is not None and t.samples_per_insert > 1:
        out.append(
            f"fifo removes each row when it is sampled, so samples_per_insert {t.samples_per_insert} > 1 "
            "can never be met: samplers would wait forever"
        )
    if t.samples_per_insert is not None:
        spi, buf = t.samples_per_insert, t.resolved_error_buffer()
        # Reverb's rule: the allowed window must fit one insert step and one sample step,
        # or inserters and samplers can each end up waiting on the other.
        if buf < max(1.0, spi):
            out.append(
                f"error_buffer {buf} < max(1, samples_per_insert={spi}): inserters and samplers "
                "can block each other forever; raise error_buffer"
            )
    if not math.isfinite(t.alpha):
        out.append("alpha must be finite")
    return out


def per_shard(t: TableSection, num_shards: int) -> TableSection:
    """The share of a table one shard holds: rows are spread evenly by id hash, so
    capacity, min_size and the rate limiter's error buffer are split too."""
    if num_shards == 1:
        return t
    spi = t.samples_per_insert
    buffer = None if spi is None else max(t.resolved_error_buffer() / num_shards, max(1.0, spi))
    return t.model_copy(
        update={
            "capacity": math.ceil(t.capacity / num_shards),
            "min_size": math.ceil(t.min_size / num_shards),
            "error_buffer": buffer,
        }
    )


class ReplaySection(Section):
    enabled: bool = True  # the replay store: its shards start when a loop uses a table
    num_shards: int = Field(default=2, ge=1, le=1024)  # shard actors; rows spread by id hash
    # Segment files live in <run.storage or run dir>/replay unless a directory or fsspec URL
    # (s3://...) is given; on an object store each acknowledged add is one uploaded object.
    dir: str | None = None
    # flush() before the ack survives a killed process; fsync also survives a
    # power cut, at a large cost in insert rate.  The default of tables that set no
    # `fsync` of their own; feedback tables fsync whatever this says (docs/reliability.md).
    fsync: bool = False
    # How long an add may wait on a table's rate limiter (samplers behind) before it fails
    # with ReplayTimeout, nothing written; the writer decides what to do about it.
    add_timeout_s: float = Field(default=30.0, gt=0)
    segment_rows: int = Field(default=65_536, ge=1)  # rows per segment file before a new one starts
    # Client side: add calls in flight before the next `add` waits for the oldest (backpressure).
    max_in_flight: int = Field(default=8, ge=1)
    shard_num_cpus: float = Field(default=0.25, gt=0)  # Ray CPUs per shard actor
    # Tables by name.  Each loop's tables are declared by its kind and added here (named after the
    # loop unless the loop names them); an entry here sets or overrides a table's settings.
    tables: dict[str, TableSection] = Field(default_factory=dict)

    @model_validator(mode="after")
    def _table_names(self) -> "ReplaySection":
        bad = [name for name in self.tables if not NAME_PATTERN.match(name)]
        if bad:
            raise ValueError(f"table names must be letters, digits, '_', '.', '-': {bad}")
        return self
