"""Feedback on completions through the shared join: thumbs, rewards, preferences; 404 / 409 / 410 / 422."""

import pytest

from core.data.schemas import completions_schema, to_record_batch
from core.models.generator import Completion
from serving.completion_join import completion_event
from serving.join import EventJoin, FeedbackRejected, to_columns
from tests.unit.test_feedback_join import Clock, _event


def _completion(i: int) -> Completion:
    return Completion(prompt_ids=[2, 7, 8], token_ids=[10 + i, 11, 3], text=f"completion {i}",
                      logprobs=[-1.0, -2.0, -0.5], sampling_logprobs=[-0.9, -1.5, -0.4], finish="stop")


def _events(group: str, ids, version: int = 1, client: str | None = None):
    return [completion_event(f"{group}-{i}", group, f"prompt {group}", _completion(i), 0.8, 0.95, "writer",
                             version, "gen-test", client) for i in ids]


@pytest.fixture
def clock():
    return Clock()


@pytest.fixture
def join(clock):
    j = EventJoin(60.0, feedback_table="completions", text_table=None, clock=clock)
    j.record(_events("g1", range(3)) + _events("g2", range(2)))
    return j


def _refused(fn, *args, **kwargs) -> tuple[int, str]:
    with pytest.raises(FeedbackRejected) as info:
        fn(*args, **kwargs)
    return info.value.status, info.value.detail


def _stored(rows):
    return to_record_batch("completions", completions_schema(), to_columns(rows))


def test_thumbs_and_reward_become_rows_of_the_completions_table(join):
    up, up_row = join.join("g1-0", label=1)
    assert up == {"event_id": "g1-0", "accepted": True, "model_version": 1, "feedback": "thumbs"}
    _, reward_row = join.join("g1-1", reward=0.25)
    batch = _stored([up_row, reward_row]).to_pylist()
    assert [r["feedback"] for r in batch] == ["thumbs", "reward"]
    assert batch[0]["thumbs_up"] is True and batch[0]["reward"] is None
    assert batch[1]["reward"] == 0.25 and batch[1]["thumbs_up"] is None
    assert batch[0]["token_ids"] == [10, 11, 3] and batch[0]["prompt_ids"] == [2, 7, 8]
    assert batch[0]["logprobs"] == [-1.0, -2.0, -0.5] and batch[0]["sampling_logprobs"] == pytest.approx([-0.9, -1.5, -0.4])
    assert batch[0]["policy_version"] == 1 and batch[0]["group_id"] == "g1" and batch[0]["rejected_event_id"] is None


def test_a_preference_carries_both_completions(join):
    answer, row = join.join("g1-2", better_than="g1-0")
    assert answer["feedback"] == "better_than"
    (stored,) = _stored([row]).to_pylist()
    assert stored["feedback"] == "preference" and stored["event_id"] == "g1-2"
    assert stored["rejected_event_id"] == "g1-0" and stored["rejected_token_ids"] == [10, 11, 3]
    assert stored["token_ids"] == [12, 11, 3] and stored["rejected_policy_version"] == 1


def test_a_rated_completion_can_still_be_named_by_a_preference(join):
    join.join("g1-0", label=0)
    _, row = join.join("g1-1", better_than="g1-0")
    assert row["rejected_completion"] == "completion 0"


def test_a_preference_across_prompts_is_refused_naming_better_than(join):
    status, detail = _refused(join.join, "g1-0", better_than="g2-0")
    assert status == 422 and "'better_than'" in detail and "another prompt" in detail
    join.join("g1-0", better_than="g1-1")  # the event stays open: a right preference is taken


def test_a_preference_on_a_prediction_is_refused(join):
    join.record([_event(9)])
    status, detail = _refused(join.join, "e9", better_than="g1-0")
    assert status == 422 and "'better_than'" in detail


def test_unknown_and_expired_completions(join, clock):
    assert _refused(join.join, "nope", label=1)[0] == 404
    status, detail = _refused(join.join, "g1-0", better_than="nope")
    assert status == 404 and "'better_than'" in detail
    clock.t += 30
    join.record(_events("g3", range(2)))
    clock.t += 31  # g1, g2 expired; g3 is 31 s old
    assert _refused(join.join, "g1-0", label=1)[0] == 410
    status, detail = _refused(join.join, "g3-0", better_than="g1-0")  # g1 is another group anyway, but gone first
    assert status == 410 and "'better_than'" in detail


def test_repeats_are_idempotent_and_a_different_feedback_conflicts(join, clock):
    first, row = join.join("g1-0", label=1)
    again, none = join.join("g1-0", label=1)
    assert again == first and none is None
    status, detail = _refused(join.join, "g1-0", reward=1.0)
    assert status == 409 and "thumbs=up" in detail
    _, pref = join.join("g1-1", better_than="g1-2")
    assert join.join("g1-1", better_than="g1-2")[1] is None
    assert _refused(join.join, "g1-1", better_than="g1-0")[0] == 409
    clock.t += 61  # expired: a repeat still gets its answer (from the tombstone)
    assert join.join("g1-0", label=1)[0] == first


@pytest.mark.parametrize("kwargs", [{}, {"label": 1, "reward": 1.0}, {"reward": 2.0}, {"label": "sideways"}])
def test_malformed_feedback_is_422(join, kwargs):
    assert _refused(join.join, "g1-0", **kwargs)[0] == 422


def test_a_failed_write_reopens_the_completion(join):
    _, row = join.take("g1-0", label=1)
    join.reopen("g1-0")
    _, again = join.take("g1-0", reward=0.5)  # open again: another feedback is taken
    assert again["feedback"] == "reward"


def test_the_replay_table_keeps_a_mixed_batch_of_feedback(join):
    """Rows of every feedback form in one table: a nullable bool with nulls (thumbs_up) read back as written."""
    from core.config.replay import TableSection
    from core.replay.table import ReplayTable

    rows = [join.join("g1-0", label=1)[1], join.join("g1-1", better_than="g1-2")[1], join.join("g2-0", reward=0.5)[1]]
    table = ReplayTable("completions", TableSection(kind="completions", capacity=10))
    table.add(to_columns(rows))
    stored = {r["event_id"]: r for r in table.export().to_pylist()}
    assert stored["g1-0"]["thumbs_up"] is True and stored["g1-1"]["thumbs_up"] is None
    assert stored["g1-1"]["rejected_event_id"] == "g1-2" and stored["g2-0"]["reward"] == 0.5
