"""Continual-learning figures on matrices the stream has not finished (core/stats/continual.py)."""

from __future__ import annotations

import pytest

from core.stats.continual import AccuracyMatrix

GROUPS = ["hotel", "book", "laptop", "phone"]


def _acc(*values: float) -> dict[str, float]:
    return dict(zip(GROUPS, values))


def _stream() -> AccuracyMatrix:
    """b, then the stream through hotel and into book; a promotion while on book dips hotel."""
    m = AccuracyMatrix(GROUPS)
    m.record_baseline(_acc(0.5, 0.4, 0.5, 0.45))
    m.enter("hotel")
    m.observe(_acc(0.8, 0.5, 0.5, 0.5))
    m.enter("book")
    m.record("hotel", _acc(0.9, 0.6, 0.55, 0.5))
    m.observe(_acc(0.7, 0.8, 0.6, 0.5))  # learning book costs hotel 0.2 for a while
    m.observe(_acc(0.85, 0.86, 0.6, 0.52))
    return m


def test_before_any_row_acc_is_the_live_versions_on_the_groups_seen():
    m = AccuracyMatrix(GROUPS)
    assert m.metrics()["ACC"] is None  # nothing measured, nothing seen
    m.record_baseline(_acc(0.5, 0.4, 0.5, 0.45))
    m.enter("hotel")
    out = m.metrics()
    assert out["ACC"] == pytest.approx(0.5) and out["seen"] == 1 and not out["finished"]
    assert out["BWT"] is None and out["FWT"] is None and out["stability_gap"] is None


def test_a_stream_in_its_second_group_has_acc_bwt_fwt_and_the_dip():
    out = _stream().metrics()
    # ACC over hotel and book, by the newest live version: (0.85 + 0.86) / 2
    assert out["ACC"] == pytest.approx(0.855)
    # BWT over hotel only (left): 0.85 - R[0][0] 0.9
    assert out["BWT"] == pytest.approx(-0.05)
    # FWT over book: R[0][1] 0.6 - b[1] 0.4
    assert out["FWT"] == pytest.approx(0.2)
    # hotel fell to 0.7 while book was learned: 0.2 below where it was left
    assert out["worst_accuracy"] == pytest.approx(0.7) and out["worst_group"] == "hotel"
    assert out["stability_gap"] == pytest.approx(0.2) and out["min_ACC"] == pytest.approx(0.7)
    assert out["matrix"] == [[0.9, 0.6, 0.55, 0.5], None, None, None] and out["seen"] == 2


def test_the_run_ending_inside_a_group_records_its_row_without_counting_it_as_left():
    m = _stream()
    m.record("book", _acc(0.84, 0.88, 0.6, 0.52))  # the run's end, still on book
    out = m.metrics()
    assert out["seen"] == 2 and not out["finished"]
    assert out["ACC"] == pytest.approx(0.86)
    assert out["BWT"] == pytest.approx(0.84 - 0.9)  # book is not left: it is not in BWT
    assert set(m.worst) == {0}  # nor in the dips


def test_a_finished_stream_gives_the_textbook_figures():
    m = AccuracyMatrix(["a", "b", "c"])
    m.record_baseline({"a": 0.5, "b": 0.4, "c": 0.5})
    for now, left, row in (("b", "a", (0.9, 0.6, 0.55)), ("c", "b", (0.8, 0.85, 0.6))):
        m.enter(now)
        m.record(left, dict(zip("abc", row)))
    m.record("c", {"a": 0.75, "b": 0.8, "c": 0.9})
    out = m.metrics()
    assert out["finished"] and out["seen"] == 3
    assert out["ACC"] == pytest.approx(2.45 / 3)
    assert out["BWT"] == pytest.approx(-0.1)
    assert out["FWT"] == pytest.approx(0.15)
    # a: 0.9 when left, then 0.8, 0.75; b: 0.85, then 0.8
    assert out["worst_accuracy"] == pytest.approx(0.75) and out["worst_group"] == "a"
    assert out["stability_gap"] == pytest.approx(0.15) and out["min_ACC"] == pytest.approx(0.775)


def test_a_stream_that_cycles_keeps_its_furthest_group_and_its_first_rows():
    m = AccuracyMatrix(["a", "b"])
    m.enter("a")
    m.enter("b")
    m.record("a", {"a": 0.9, "b": 0.5})
    m.enter("a")  # the second pass
    m.observe({"a": 0.6, "b": 0.8})
    out = m.metrics()
    assert out["seen"] == 2 and out["BWT"] == pytest.approx(-0.3) and out["worst_accuracy"] == pytest.approx(0.6)
    assert m.headline() == {"ACC": 0.7, "BWT": -0.3, "FWT": None, "stability_gap": 0.3}
