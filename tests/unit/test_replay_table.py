"""ReplayTable in memory: idempotent adds, eviction, samplers, rate limiter, policy lag, configs."""

from __future__ import annotations

import re
import sys
import threading
from pathlib import Path

import numpy as np
import pyarrow as pa
import pytest
from pydantic import ValidationError
from scipy.stats import chisquare

from core.config.loader import ConfigError, load_config
from core.config.replay import TableSection, deadlock_reasons, per_shard
from core.replay.table import KEY, PROBABILITY, TIMES_SAMPLED, ReplayError, ReplayTable, ReplayTimeout

sys.path.insert(0, str(Path(__file__).resolve().parents[2] / "benchmarks"))
from _transitions import cartpole_batch  # noqa: E402

NAME = "transitions"


def make(**kw) -> ReplayTable:
    seed = kw.pop("seed", 0)
    return ReplayTable(NAME, TableSection(kind="transitions", obs_dim=4, **kw), seed=seed)


def batch(n: int, start: int = 0, version: int = 1, actor: str = "a") -> pa.RecordBatch:
    return cartpole_batch(n, start, table=NAME, actor=actor, version=version)


def ids(rows) -> list[str]:
    return rows.column("id").to_pylist()


def run_in_thread(fn):
    """Start fn in a thread; returns (thread, started event, result dict)."""
    started, result = threading.Event(), {}

    def body():
        started.set()
        try:
            result["value"] = fn()
        except BaseException as exc:  # noqa: BLE001 - handed back to the test
            result["error"] = exc

    t = threading.Thread(target=body, daemon=True)
    t.start()
    assert started.wait(5)
    return t, result


# ---- 1. idempotent add -------------------------------------------------------------


def test_readding_the_same_batch_accepts_nothing_and_counts_duplicates():
    t = make(capacity=100)
    b = batch(10)
    assert t.add(b) == {"accepted": 10, "duplicates": 0}
    assert t.add(b) == {"accepted": 0, "duplicates": 10}
    assert t.size == 10
    info = t.info()
    assert info["inserts"] == 10 and info["duplicates"] == 10
    # a partly new batch: only the new rows go in
    assert t.add(batch(10, start=5)) == {"accepted": 5, "duplicates": 5}
    assert ids(t.export()) == [f"a-{i}" for i in range(15)]
    assert t.add(batch(0, start=50)) == {"accepted": 0, "duplicates": 0}
    assert t.size == 15


def test_duplicates_inside_one_batch_are_dropped():
    t = make(capacity=100)
    b = batch(6)
    doubled = pa.Table.from_batches([b, b.slice(1, 3), b.slice(4, 1)])  # a-1..a-3 and a-4 twice
    assert t.add(doubled) == {"accepted": 6, "duplicates": 4}
    assert ids(t.export()) == [f"a-{i}" for i in range(6)]
    assert len(t.index) == t.size == 6


def test_an_evicted_id_can_be_added_again():
    t = make(capacity=10)
    t.add(batch(10, 0))
    t.add(batch(10, 10))  # evicts a-0 .. a-9
    assert t.add(batch(5, 0)) == {"accepted": 5, "duplicates": 0}
    assert ids(t.export()) == [f"a-{i}" for i in range(15, 20)] + [f"a-{i}" for i in range(5)]


# ---- 2. capacity and the remover ------------------------------------------------------


def test_over_capacity_keeps_exactly_the_newest_rows():
    t = make(capacity=25)
    for k in range(7):
        t.add(batch(10, 10 * k))
    assert t.size == 25
    assert ids(t.export()) == [f"a-{i}" for i in range(45, 70)]
    assert len(t.index) == t.size
    assert sorted(t.index) == sorted(f"a-{i}" for i in range(45, 70))
    # the index maps each id to its live seq, and samples carry that seq as _key
    rows = t.sample(50)
    assert all(t.index[i] == k for i, k in zip(ids(rows), rows.column(KEY).to_pylist()))


# ---- 3. samplers ----------------------------------------------------------------------------


@pytest.mark.parametrize("alpha", [1.0, 0.5])
def test_prioritized_sampling_frequencies_follow_priorities(alpha):
    t = make(capacity=8, sampler="prioritized", alpha=alpha, seed=1234)
    t.add(batch(8))
    prio = np.array([1.0, 2.0, 3.0, 4.0, 6.0, 8.0, 12.0, 16.0])
    assert t.update_priorities(np.arange(8), prio) == 8
    expected = prio**alpha / (prio**alpha).sum()
    counts = np.zeros(8)
    draws = 0
    for _ in range(300):
        rows = t.sample(37)
        keys = np.asarray(rows.column(KEY).to_pylist())
        np.add.at(counts, keys, 1)
        draws += len(keys)
        # the reported probability is p_i^alpha / sum_k p_k^alpha
        np.testing.assert_allclose(rows.column(PROBABILITY).to_numpy(), expected[keys], rtol=1e-4)
    assert draws == 300 * 37
    assert chisquare(counts, expected * draws).pvalue > 0.01
    # and not merely uniform
    assert counts[-1] > 5 * counts[0] if alpha == 1.0 else counts[-1] > 2 * counts[0]


def test_update_priorities_only_touches_live_rows():
    t = make(capacity=4, sampler="prioritized", alpha=1.0)
    t.add(batch(4, 0))
    t.add(batch(2, 4))  # keys 0, 1 evicted
    assert t.update_priorities(np.array([0, 1, 2, 5]), np.array([9.0, 9.0, 0.0, 3.0])) == 2
    rows = t.sample(64)
    keys = rows.column(KEY).to_pylist()
    assert 2 not in keys  # priority 0: (practically) never drawn
    assert set(keys) <= {3, 4, 5}
    probs = dict(zip(keys, rows.column(PROBABILITY).to_pylist()))
    assert probs[5] == pytest.approx(3 / 5, rel=1e-4)  # priorities now 1, 1, 3 (new rows got the old max, 1)


def test_uniform_sampling_frequencies_are_uniform():
    t = make(capacity=8, sampler="uniform", seed=99)
    t.add(batch(8))
    counts, draws = np.zeros(8), 0
    for _ in range(200):
        rows = t.sample(50)
        keys = np.asarray(rows.column(KEY).to_pylist())
        np.add.at(counts, keys, 1)
        draws += len(keys)
        assert np.allclose(rows.column(PROBABILITY).to_numpy(), 1 / 8)
    assert chisquare(counts, np.full(8, draws / 8)).pvalue > 0.01


def test_fifo_returns_oldest_first_and_removes_them():
    t = make(capacity=100, sampler="fifo")
    t.add(batch(6, 0))
    t.add(batch(4, 6))
    first = t.sample(4)
    assert ids(first) == [f"a-{i}" for i in range(4)]
    assert first.column(KEY).to_pylist() == [0, 1, 2, 3]
    assert t.size == 6 and ids(t.export()) == [f"a-{i}" for i in range(4, 10)]
    assert ids(t.sample(6)) == [f"a-{i}" for i in range(4, 10)]
    assert t.size == 0 and len(t.index) == 0
    with pytest.raises(ReplayTimeout):
        t.sample(1, timeout_s=0)


# ---- 4. rate limiter ---------------------------------------------------------------------


def limited(**kw) -> ReplayTable:
    return make(capacity=1000, samples_per_insert=1.0, min_size=10, error_buffer=20.0, **kw)


def test_sampler_ahead_of_samples_per_insert_blocks_until_rows_are_inserted():
    t = limited()
    with pytest.raises(ReplayTimeout):
        t.sample(1, timeout_s=0)  # below min_size
    t.add(batch(10))
    taken = 0
    while True:
        try:
            taken += t.sample(1, timeout_s=0).num_rows
        except ReplayTimeout:
            break
        assert taken <= 40, "the rate limiter never stopped the sampler"
    # diff starts at min_size * spi = 10 and may fall to min_diff = 10 - 20
    assert taken == 20
    with pytest.raises(ReplayTimeout, match="transitions"):
        t.sample(1, timeout_s=0.2)

    thread, result = run_in_thread(lambda: t.sample(2, timeout_s=10))
    thread.join(0.2)
    assert thread.is_alive(), "the sampler should wait for inserts"
    t.add(batch(5, 100))
    thread.join(5)
    assert not thread.is_alive()
    assert "error" not in result, result.get("error")
    assert result["value"].num_rows == 2


def test_inserter_ahead_of_samplers_blocks_until_rows_are_sampled():
    t = limited()
    for k in range(4):  # diff 10, 20, 30 (<= max_diff 30, still allowed), 40
        t.add(batch(10, 10 * k), timeout_s=0)
    with pytest.raises(ReplayTimeout, match="insert"):
        t.add(batch(10, 100), timeout_s=0.2)
    assert t.size == 40  # the refused batch left no trace
    assert "a-100" not in t.index

    thread, result = run_in_thread(lambda: t.add(batch(10, 200), timeout_s=10))
    thread.join(0.2)
    assert thread.is_alive(), "the inserter should wait for samples"
    t.sample(10)
    thread.join(5)
    assert not thread.is_alive()
    assert result.get("value") == {"accepted": 10, "duplicates": 0}, result
    assert t.size == 50


def test_sample_larger_than_the_rate_limiter_window_is_refused():
    t = limited()
    t.add(batch(10))
    with pytest.raises(ReplayError, match=r"'transitions'.*window"):
        t.sample(41, timeout_s=0)
    with pytest.raises(ReplayError, match="sample size"):
        t.sample(0)


# ---- 5. deadlocking configs -----------------------------------------------------------------


@pytest.mark.parametrize(
    "kw, reason",
    [
        ({"capacity": 10, "min_size": 11}, "min_size 11 > capacity 10"),
        ({"sampler": "fifo", "samples_per_insert": 2.0}, "fifo removes each row"),
        ({"samples_per_insert": 2.0, "error_buffer": 1.5}, r"error_buffer 1.5 < max\(1, samples_per_insert=2.0\)"),
        ({"samples_per_insert": 0.5, "error_buffer": 0.5}, r"error_buffer 0.5 < max\(1"),
    ],
)
def test_deadlocking_table_configs_are_refused_with_the_reason(kw, reason):
    with pytest.raises(ValidationError, match=reason):
        TableSection(**kw)
    # the same reason through the config loader, as one line naming the table
    overrides = ["replay.tables.x.kind=transitions"] + [f"replay.tables.x.{k}={v}" for k, v in kw.items()]
    with pytest.raises(ConfigError) as info:
        load_config(None, overrides)
    msg = str(info.value)
    assert "replay.tables.x" in msg and "\n" not in msg
    assert re.search(reason, msg)


@pytest.mark.parametrize(
    "kw",
    [
        {"samples_per_insert": 2.0, "error_buffer": 2.0},
        {"sampler": "fifo", "samples_per_insert": 1.0},
        {"capacity": 10, "min_size": 10},
        {"samples_per_insert": 4.0, "min_size": 1000, "capacity": 2000},
    ],
)
def test_workable_configs_pass_and_stay_workable_per_shard(kw):
    t = TableSection(**kw)
    for shards in (1, 2, 3, 7):
        part = per_shard(t, shards)
        assert deadlock_reasons(part) == []
        assert part.capacity * shards >= t.capacity and part.min_size <= part.capacity


# ---- 7. policy lag, info, times sampled ---------------------------------------------------------


def test_max_policy_lag_drops_stale_rows_and_info_reports_versions():
    t = make(capacity=100, max_policy_lag=2)
    t.add(batch(10, 0, version=1))
    t.add(batch(10, 10, version=3))
    info = t.info()
    assert (info["oldest_policy_version"], info["newest_policy_version"]) == (1, 3)
    t.add(batch(10, 20, version=5))
    rows = t.sample(200)
    versions = set(rows.column("policy_version").to_pylist())
    assert versions == {3, 5}
    info = t.info()
    assert info["size"] == 20
    assert (info["oldest_policy_version"], info["newest_policy_version"]) == (3, 5)


def test_empty_table_info():
    info = make(capacity=10).info()
    assert info["size"] == 0 and info["oldest_policy_version"] is None and info["newest_policy_version"] is None


@pytest.mark.parametrize("sampler", ["uniform", "prioritized", "fifo"])
def test_max_policy_lag_applies_to_every_sampler(sampler):
    # a slow actor's stale rows sit between fresh ones (not at the head)
    t = make(capacity=100, max_policy_lag=0, sampler=sampler)
    t.add(batch(2, 0, version=1, actor="fast"))
    t.add(batch(2, 0, version=0, actor="slow"))
    t.add(batch(2, 10, version=1, actor="fast"))
    rows = t.sample(4)
    assert set(rows.column("policy_version").to_pylist()) == {1}, ids(rows)


def test_fifo_with_policy_lag_never_redelivers_or_reads_past_the_tail():
    t = make(capacity=10, sampler="fifo", max_policy_lag=0)
    t.add(batch(4, 0, version=1))
    consumed = ids(t.sample(4))
    t.add(batch(3, 0, version=0, actor="slow"))  # stale at the head once newer rows exist
    t.add(batch(3, 10, version=1))
    rows = t.sample(5)
    assert not set(ids(rows)) & set(consumed), f"re-delivered consumed rows: {ids(rows)}"
    assert set(ids(rows)) <= {"a-10", "a-11", "a-12"}
    assert 0 <= t.size and t.head <= t.tail


def test_sampling_when_every_live_row_is_stale_fails_cleanly():
    # the newest version was evicted; every live row now lags it
    for sampler in ("uniform", "prioritized"):
        t = make(capacity=5, max_policy_lag=0, sampler=sampler)
        t.add(batch(1, 0, version=5, actor="new"))
        t.add(batch(5, 0, version=1))
        try:
            out = t.sample(1, timeout_s=0.1)
        except ReplayTimeout:
            continue
        assert out.num_rows == 0


def test_times_sampled_increments():
    t = make(capacity=10)
    t.add(batch(1))
    seen = [t.sample(1).column(TIMES_SAMPLED).to_pylist() for _ in range(3)]
    assert seen == [[1], [2], [3]]
    assert t.sample(3).column(TIMES_SAMPLED).to_pylist() == [6, 6, 6]
    t.add(batch(1, 0, actor="b"))  # a new row starts at zero
    rows = t.sample(40)
    fresh = [n for i, n in zip(ids(rows), rows.column(TIMES_SAMPLED).to_pylist()) if i == "b-0"]
    assert fresh and max(fresh) == len(fresh)
    assert t.info()["samples"] == 3 + 3 + 40
