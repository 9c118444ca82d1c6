"""Samples-per-insert rate limiter (Reverb's SampleToInsertRatio), in rows.

    diff = inserts * samples_per_insert - samples
    inserts wait while diff > max_diff        (learners are behind)
    samples wait while diff - n < min_diff    (actors are behind)

with min_diff / max_diff = min_size * spi -/+ error_buffer.  A whole batch may
overshoot the window by one step, so a window of at least max(1, spi) on each
side (checked when the table is built) means neither side can block the other
forever.
"""

from __future__ import annotations

from dataclasses import dataclass


@dataclass
class RateLimiter:
    samples_per_insert: float | None
    min_size: int
    error_buffer: float
    inserts: int = 0
    samples: int = 0

    @property
    def diff(self) -> float:
        return self.inserts * (self.samples_per_insert or 0.0) - self.samples

    @property
    def min_diff(self) -> float:
        return self.min_size * (self.samples_per_insert or 0.0) - self.error_buffer

    @property
    def max_diff(self) -> float:
        return self.min_size * (self.samples_per_insert or 0.0) + self.error_buffer

    def max_sample_rows(self) -> float:
        return float("inf") if self.samples_per_insert is None else 2 * self.error_buffer

    def can_insert(self, size: int) -> bool:
        if self.samples_per_insert is None or size < self.min_size:
            return True
        return self.diff <= self.max_diff

    def can_sample(self, n: int, size: int) -> bool:
        if size < self.min_size or size == 0:
            return False
        if self.samples_per_insert is None:
            return True
        return self.diff - n >= self.min_diff

    def record_insert(self, n: int) -> None:
        self.inserts += n

    def record_sample(self, n: int) -> None:
        self.samples += n
