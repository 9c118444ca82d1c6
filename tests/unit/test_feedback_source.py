"""The learner's feedback source: joined rows to batches, and how it asks the replay store for them."""

from __future__ import annotations

import time
from types import SimpleNamespace

import numpy as np
import pyarrow as pa
import pytest

from core.data.schemas import feedback_schema, to_record_batch
from learners.feedback_source import NO_LABEL, FeedbackBatch, FeedbackSource, feedback_to_batch
from learners.objective import WorkerContext


def _feedback_rb(n: int, start: int = 0) -> pa.RecordBatch:
    ts = pa.array(np.arange(start, start + n) + 1_700_000_000_000_000, pa.int64()).cast(pa.timestamp("us", tz="UTC"))
    return to_record_batch("feedback", feedback_schema(), {
        "id": [f"e{i}" for i in range(start, start + n)], "table": ["feedback"] * n, "source": ["feedback"] * n,
        "actor_id": ["serve"] * n, "policy_id": ["sentiment"] * n, "policy_version": [3] * n, "created_at": ts,
        "event_id": [f"e{i}" for i in range(start, start + n)], "text": [f"text {i}" for i in range(start, start + n)],
        "prediction": [i % 2 for i in range(n)], "probs": [[0.8, 0.2] if i % 2 == 0 else [0.3, 0.7] for i in range(n)],
        "label": [1 if i % 3 == 0 else None for i in range(n)],
        "reward": [None if i % 3 == 0 else float(i % 2) for i in range(n)],
    })


def test_feedback_rows_to_batch():
    b = feedback_to_batch(_feedback_rb(6))
    assert b.text[0] == "text 0" and b.prediction.tolist() == [0, 1, 0, 1, 0, 1]
    np.testing.assert_allclose(b.logged_p, [0.8, 0.7, 0.8, 0.7, 0.8, 0.7], rtol=1e-6)  # probs[prediction]
    assert b.label.tolist() == [1, NO_LABEL, NO_LABEL, 1, NO_LABEL, NO_LABEL]
    assert np.isnan(b.reward[0]) and b.reward[1:3].tolist() == [1.0, 0.0]
    assert b.created_at[0] == 1_700_000_000_000_000 and b.policy_version.tolist() == [3] * 6


def test_an_explored_answer_brings_its_own_propensity():
    rb = _feedback_rb(4)
    # rows 0 and 1 were served greedily (propensity 1), row 2 explored, row 3 predates the column
    rb = rb.set_column(rb.schema.get_field_index("propensity"), "propensity",
                       pa.array([1.0, 1.0, 0.25, None], pa.float32()))
    np.testing.assert_allclose(feedback_to_batch(rb).logged_p, [0.8, 0.7, 0.25, 0.7], rtol=1e-6)


class _Sampler:
    """Empty for the first `empty` calls (TimeoutError, as a fifo table below n rows), then rows."""

    def __init__(self, empty: int, fail: BaseException | None = None):
        self.empty, self.fail, self.calls = empty, fail, 0

    def sample(self, table, n, timeout_s=None):
        self.calls += 1
        if self.calls <= self.empty:
            raise TimeoutError("empty")
        if self.fail is not None:
            raise self.fail
        return _feedback_rb(n, start=100 * self.calls)


def test_feedback_source_idles_while_empty_then_yields_fresh_rows():
    src = FeedbackSource(_Sampler(empty=10**9), "feedback", rows=4, sample_timeout_s=0.01, idle_after_s=0.05)
    it = src.batches(WorkerContext(), seed=0)
    assert next(it) is None  # users are quiet: the loop gets control back
    it.close()
    it = FeedbackSource(_Sampler(empty=2), "feedback", rows=4, batches_per_sample=2, idle_after_s=5).batches(
        WorkerContext(), 0)
    first, second = _next_batch(it), _next_batch(it)
    assert len(first) == 4 and len(second) == 4 and first.text != second.text
    it.close()


def test_feedback_source_surfaces_store_errors():
    it = FeedbackSource(_Sampler(empty=0, fail=ValueError("table 'feedback' unknown")), "feedback", rows=4,
                        idle_after_s=5).batches(WorkerContext(), 0)
    with pytest.raises(ValueError, match="unknown"):
        _next_batch(it)


def test_a_fifo_feedback_table_hands_each_row_out_once():
    from core.config.replay import TableSection
    from core.replay.table import ReplayTable

    table = ReplayTable("feedback", TableSection(kind="feedback", sampler="fifo", capacity=100), seed=0)
    table.add(_feedback_rb(10))
    sampler = SimpleNamespace(sample=lambda name, n, timeout_s=None: table.sample(n, timeout_s))
    it = FeedbackSource(sampler, "feedback", rows=4, sample_timeout_s=0.05, idle_after_s=0.3).batches(WorkerContext(), 0)
    got = [_next_batch(it), _next_batch(it)]
    assert [len(b) for b in got] == [4, 4] and got[0].text + got[1].text == [f"text {i}" for i in range(8)]
    assert next(it) is None  # 2 rows left: a fifo sample of 4 waits for more traffic
    table.add(_feedback_rb(2, start=10))
    assert _next_batch(it).text == [f"text {i}" for i in range(8, 12)]
    it.close()


def _next_batch(it, within_s: float = 30.0) -> FeedbackBatch:
    """The next real batch (idle Nones skipped): a loaded machine may be slow to fetch it."""
    deadline = time.monotonic() + within_s
    while time.monotonic() < deadline:
        b = next(it)
        if b is not None:
            return b
    raise AssertionError("no batch in time")


def test_a_source_behind_the_stream_hands_a_catch_up_batch_else_one_batch():
    from core.config.replay import TableSection
    from core.replay.table import ReplayTable

    table = ReplayTable("feedback", TableSection(kind="feedback", sampler="fifo", capacity=100), seed=0)
    table.add(_feedback_rb(13))
    sampler = SimpleNamespace(sample=lambda name, n, timeout_s=None: table.sample(n, timeout_s))
    it = FeedbackSource(sampler, "feedback", rows=4, catch_up=3, sample_timeout_s=0.05,
                        idle_after_s=0.3).batches(WorkerContext(), 0)
    # 13 rows waiting: 12 at once (the learner is behind), then 1 short of a batch: it waits as before
    assert _next_batch(it).text == [f"text {i}" for i in range(12)]
    assert next(it) is None
    table.add(_feedback_rb(5, start=13))  # 6 waiting, fewer than 3 batches: one plain batch of 4
    assert _next_batch(it).text == [f"text {i}" for i in range(12, 16)]
    it.close()
