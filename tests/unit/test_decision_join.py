"""Rewards on decisions through the shared join: rows of the decisions table, 404 / 409 / 410 / 422, and
the default reward stored when a decision's window closes without one."""

import json

import pytest

from core.data.schemas import decisions_schema, to_record_batch
from serving.decision_join import DecisionEvent
from serving.join import EventJoin, FeedbackRejected, to_columns
from tests.unit.test_feedback_join import Clock

ACTIONS = [{"id": "news", "features": {"item": {"topic": "news"}}}, {"id": "sport", "features": {"item": {"topic": "sport"}}}]


def _decision(event_id: str, default_reward: float | None = 0.0) -> DecisionEvent:
    return DecisionEvent(event_id, {"user": {"age": 31}}, [dict(a) for a in ACTIONS], 1, 0.8, [0.2, 0.8],
                         "offers", 3, "dec-test", default_reward=default_reward)


@pytest.fixture
def clock():
    return Clock()


@pytest.fixture
def join(clock):
    j = EventJoin(10.0, feedback_table="decisions", text_table=None, clock=clock)
    j.record([_decision("d1"), _decision("d2"), _decision("quiet", default_reward=None)])
    return j


def _refused(fn, *args, **kwargs) -> tuple[int, str]:
    with pytest.raises(FeedbackRejected) as info:
        fn(*args, **kwargs)
    return info.value.status, info.value.detail


def _stored(rows):
    return to_record_batch("decisions", decisions_schema(), to_columns(rows)).to_pylist()


def test_a_reward_becomes_a_row_with_the_context_actions_and_propensity(join):
    answer, row = join.join("d1", reward=0.5)
    assert answer == {"event_id": "d1", "accepted": True, "model_version": 3, "action_id": "sport", "reward": 0.5}
    (stored,) = _stored([row])
    assert stored["action_id"] == "sport" and stored["chosen"] == 1 and stored["reward_source"] == "client"
    assert json.loads(stored["context"]) == {"user": {"age": 31}} and json.loads(stored["actions"]) == ACTIONS
    assert stored["propensity"] == pytest.approx(0.8) and stored["policy_version"] == 3


def test_repeats_conflicts_unknown_ids_and_other_kinds_of_feedback(join):
    first, _ = join.join("d1", reward=1.0)
    again, row = join.join("d1", reward=1.0)
    assert again == first and row is None
    assert _refused(join.join, "d1", reward=0.0)[0] == 409
    assert _refused(join.join, "nope", reward=1.0)[0] == 404
    assert _refused(join.join, "d2", label=1)[0] == 422
    assert _refused(join.join, "d2", reward=float("nan"))[0] == 422
    assert _refused(join.join, "d2", reward=1.0, better_than="d1")[0] == 422


def test_a_closed_window_stores_the_default_reward_once_and_a_late_reward_hears_why(join, clock):
    join.join("d1", reward=1.0)
    assert join.take_defaulted() == []
    clock.t += 11
    rows = join.take_defaulted()
    assert [r["event_id"] for r in rows] == ["d2"]  # d1 had its reward; `quiet` has no default
    (stored,) = _stored(rows)
    assert stored["reward"] == 0.0 and stored["reward_source"] == "default" and stored["id"] == "feedback-d2"
    assert join.take_defaulted() == [] and join.stats.defaulted == 1
    status, detail = _refused(join.join, "d2", reward=1.0)
    assert status == 410 and "default reward=0 was stored" in detail
    assert _refused(join.join, "quiet", reward=1.0)[0] == 410


def test_a_reward_taken_but_not_yet_stored_is_not_defaulted(join, clock):
    join.take("d2", reward=0.25)  # its write is in flight when the window closes
    clock.t += 11
    assert [r["event_id"] for r in join.take_defaulted()] == ["d1"]
