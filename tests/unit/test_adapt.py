"""The adaptive layer's logic without a cluster: continual metrics, river detectors, controller rules."""

from __future__ import annotations

import random

import pytest

from core.config.adapt import AdaptSection, DetectorSection
from core.stats.continual import AccuracyMatrix
from core.adapt.controller import Boost, Controller
from core.adapt.detectors import Alarm, Detector


# ---- continual metrics ---------------------------------------------------------------------
def test_acc_bwt_fwt_match_a_hand_computed_matrix():
    m = AccuracyMatrix(["hotel", "book", "laptop"])
    m.record_baseline({"hotel": 0.5, "book": 0.4, "laptop": 0.5})
    m.record("hotel", {"hotel": 0.9, "book": 0.6, "laptop": 0.55})
    m.record("book", {"hotel": 0.8, "book": 0.85, "laptop": 0.6})
    m.record("laptop", {"hotel": 0.75, "book": 0.8, "laptop": 0.9})
    out = m.metrics()
    # ACC = (0.75 + 0.8 + 0.9) / 3
    assert out["ACC"] == pytest.approx(2.45 / 3)
    # BWT = ((0.75 - 0.9) + (0.8 - 0.85)) / 2 = -0.1
    assert out["BWT"] == pytest.approx(-0.1)
    # FWT = ((R[0][1] - b[1]) + (R[1][2] - b[2])) / 2 = ((0.6 - 0.4) + (0.6 - 0.5)) / 2 = 0.15
    assert out["FWT"] == pytest.approx(0.15)
    assert out["matrix"][1] == [0.8, 0.85, 0.6] and out["groups"] == ["hotel", "book", "laptop"]


def test_bad_rows_and_groups_are_refused():
    m = AccuracyMatrix(["a", "b"])
    with pytest.raises(ValueError, match="no accuracy for groups"):
        m.record("b", {"a": 0.9})
    with pytest.raises(ValueError, match="distinct"):
        AccuracyMatrix(["a", "a"])


# ---- detectors ---------------------------------------------------------------------------------
def _bernoulli(p_before: float, p_after: float, n: int = 3000, change: int = 1500, seed: int = 0):
    rng = random.Random(seed)
    return [float(rng.random() < (p_before if i < change else p_after)) for i in range(n)]


@pytest.mark.parametrize("kind", ["adwin", "page_hinkley"])
def test_a_drop_in_accuracy_raises_an_alarm_soon_after_the_change(kind):
    det = Detector("correctness", DetectorSection(kind=kind))
    alarms = [a for x in _bernoulli(0.92, 0.7) if (a := det.update(x))]
    assert alarms, "no alarm for a drop from 0.92 to 0.7"
    first = alarms[0]
    assert 1500 < first.at <= 1500 + 400 and first.after < first.before
    assert first.signal == "correctness" and first.detector == kind


@pytest.mark.parametrize("kind", ["adwin", "page_hinkley"])
def test_a_rise_or_a_stationary_stream_raises_no_alarm(kind):
    for stream in (_bernoulli(0.7, 0.92, seed=1), _bernoulli(0.85, 0.85, n=10_000, seed=2)):
        det = Detector("correctness", DetectorSection(kind=kind))
        assert not [a for x in stream if (a := det.update(x))]


# ---- controller --------------------------------------------------------------------------------
def _alarm(at: int) -> Alarm:
    return Alarm("correctness", "adwin", at, 0.9, 0.7)


def test_an_alarm_boosts_the_learner_and_leaves_the_rollback_guard_to_its_paired_test():
    cfg = AdaptSection(enabled=True, boost_updates=150, lr_factor=3.0, boost_rehearsal=0.1,
                       boost_candidate_every=10, cooldown_events=700)
    decision = Controller(cfg).on_alarm(_alarm(400), events=400)
    assert decision.suppressed is None
    (boost,) = decision.actions
    assert Boost.from_action(boost) == Boost(updates=150, lr_factor=3.0, rehearsal=0.1, candidate_every=10)


def test_alarms_inside_the_cooldown_are_recorded_without_action():
    ctl = Controller(AdaptSection(enabled=True, cooldown_events=1000))
    assert ctl.on_alarm(_alarm(10), events=500).actions
    inside = ctl.on_alarm(_alarm(20), events=1200)
    assert not inside.actions and inside.suppressed == "cooldown: 300 more feedback events"
    assert ctl.on_alarm(_alarm(30), events=1500).actions  # the cooldown counts from the last action
    assert len(ctl.decisions) == 3
    assert inside.to_dict()["suppressed"].startswith("cooldown") and inside.to_dict()["at"] == 20


def test_lr_factor_is_bounded_by_the_config():
    from pydantic import ValidationError

    with pytest.raises(ValidationError):
        AdaptSection(lr_factor=50)
