"""The episode join's rules: steps in order, stored before they count, retries answered once."""

import math

import pytest

from serving.episode_join import EndRow, EpisodeJoin, StepRow
from serving.join_rules import FeedbackRejected


class Clock:
    def __init__(self):
        self.t = 1000.0

    def __call__(self):
        return self.t


def _join(**kw):
    clock = Clock()
    return EpisodeJoin("cart", "cart", 0.99, clock=clock, **kw), clock


def _row(ep, obs, step=None, reward=None, action=1, version=3):
    return StepRow(ep, list(obs), step, reward, action, 0.5, version,
                   {"action": action, "propensity": 0.5, "version": version})


def _act(join, rows, client="c"):
    plan = join.plan_steps(rows, client, "episode_ids")
    join.apply(plan)
    return plan


def _refused(status, fn, *args):
    with pytest.raises(FeedbackRejected) as err:
        fn(*args)
    assert err.value.status == status, err.value.detail
    return err.value.detail


def test_each_call_completes_the_step_before_it():
    join, _ = _join()
    (ep,) = join.start([None], "c", "episode_id")
    assert _act(join, [_row(ep, [0.0], 0)]).transitions == []
    plan = _act(join, [_row(ep, [1.0], 1, reward=1.0, action=0)])
    (t,) = plan.transitions
    assert t["obs"] == [0.0] and t["next_obs"] == [1.0] and t["action"] == 1 and t["reward"] == 1.0
    assert t["id"] == f"cart:{ep}:0" and t["source"] == "client" and t["policy_version"] == 3
    assert t["discount"] == 0.99 and t["logp"] == pytest.approx(math.log(0.5)) and not t["terminated"]
    end = join.plan_ends([EndRow(ep, 2.0, False, True, [2.0], 1)], "c", "episode_id")
    (last,) = end.transitions
    assert last["obs"] == [1.0] and last["action"] == 0 and last["next_obs"] == [2.0] and last["truncated"]
    (done,) = join.apply(end)
    assert done.ended["answer"] == {"episode_id": ep, "return": 3.0, "length": 2}
    assert join.view(ep, "c")["state"] == "truncated"


def test_a_retried_step_gets_the_action_it_was_served_and_stores_nothing():
    join, _ = _join()
    (ep,) = join.start(["e1"], "c", "episode_id")
    _act(join, [_row(ep, [0.0], 0, action=1)])
    _act(join, [_row(ep, [1.0], 1, reward=1.0, action=0)])
    again = join.plan_steps([_row(ep, [1.0], 1, reward=1.0, action=1)], "c", "episode_id")
    assert again.transitions == [] and again.repeats[0]["action"] == 0 and again.repeats[0]["step"] == 1
    join.apply(again)
    assert join.open[ep].length == 1
    detail = _refused(409, join.plan_steps, [_row(ep, [1.0], 1, reward=5.0)], "c", "episode_id")
    assert "reward" in detail and "step 0" in detail


def test_out_of_order_unknown_and_missing_rewards_are_refused_by_field():
    join, _ = _join()
    a, b = join.start(["a", "b"], "c", "episode_ids")
    _act(join, [_row(a, [0.0], 0), _row(b, [0.0], 0)])
    assert "episode_ids[1]" in _refused(404, join.plan_steps, [_row(a, [1.0], 1, 1.0), _row("zz", [0.0], 0)],
                                        "c", "episode_ids")
    assert join.open[a].length == 0 and not join.open[a].busy  # the good row did not count either
    assert "rewards[0]" in _refused(422, join.plan_steps, [_row(a, [1.0], 1)], "c", "episode_ids")
    assert "is at step 1, not 4" in _refused(409, join.plan_steps, [_row(a, [1.0], 4, 1.0)], "c", "episode_ids")
    assert "appears twice" in _refused(422, join.plan_steps, [_row(a, [1.0], 1, 1.0), _row(a, [1.0], 1, 1.0)],
                                       "c", "episode_ids")
    assert "step 0 has no step before it" in _refused(422, join.plan_steps, [_row(join.start(["n"], "c", "episode_id")[0],
                                                                             [0.0], 0, 1.0)], "c", "episode_id")
    # another client cannot see or touch the episode
    _refused(404, join.plan_steps, [_row(a, [1.0], 1, 1.0)], "other", "episode_id")
    _refused(404, join.view, a, "other")


def test_a_failed_write_releases_the_call_for_its_retry():
    join, _ = _join()
    (ep,) = join.start(["e"], "c", "episode_id")
    _act(join, [_row(ep, [0.0], 0)])
    plan = join.plan_steps([_row(ep, [1.0], 1, 1.0)], "c", "episode_id")
    assert "in flight" in _refused(503, join.plan_steps, [_row(ep, [1.0], 1, 1.0)], "c", "episode_id")
    join.release(plan)
    retry = join.plan_steps([_row(ep, [1.0], 1, 1.0)], "c", "episode_id")
    assert len(retry.transitions) == 1 and retry.transitions[0]["id"] == plan.transitions[0]["id"]
    join.apply(retry)
    assert join.open[ep].length == 1


def test_ends_are_checked_and_idempotent():
    join, _ = _join()
    (ep,) = join.start(["e"], "c", "episode_id")
    _act(join, [_row(ep, [0.0], 0)])
    assert "final_obs" in _refused(422, join.plan_ends, [EndRow(ep, 1.0, False, True)], "c", "episode_id")
    assert "either terminated or truncated" in _refused(422, join.plan_ends, [EndRow(ep, 1.0, True, True)], "c",
                                                        "episode_id")
    end = join.plan_ends([EndRow(ep, 1.0, True, False)], "c", "episode_id")
    assert end.transitions[0]["terminated"]
    join.apply(end)
    again = join.plan_ends([EndRow(ep, 1.0, True, False)], "c", "episode_id")
    assert again.transitions == [] and again.repeats[0]["return"] == 1.0
    _refused(409, join.plan_ends, [EndRow(ep, 7.0, True, False)], "c", "episode_id")
    assert "has ended" in _refused(409, join.plan_steps, [_row(ep, [1.0], 1, 1.0)], "c", "episode_id")
    assert "has ended" in _refused(409, join.start, ["e"], "c", "episode_id")


def test_an_abandoned_episode_is_truncated_with_its_stored_steps():
    join, clock = _join(episode_ttl_s=60)
    (ep,) = join.start(["e"], "c", "episode_id")
    _act(join, [_row(ep, [0.0], 0)])
    _act(join, [_row(ep, [1.0], 1, 1.0)])
    clock.t += 61
    assert "expired" in _refused(410, join.plan_steps, [_row(ep, [2.0], 2, 1.0)], "c", "episode_id")
    view = join.view(ep, "c")
    assert view["state"] == "truncated" and view["length"] == 1 and "no call for 60s" in view["reason"]
    assert join.stats.episodes_expired == 1 and join.open_by_client == {}


def test_per_client_limits():
    join, clock = _join(max_open_per_client=2, max_steps_per_s=10)
    join.start(["a", "b"], "c", "episode_ids")
    assert "limit of 2 open episodes" in _refused(429, join.start, [None], "c", "episode_id")
    join.start([None], "d", "episode_id")  # another client is not held back
    rows = [_row("a", [0.0], 0), _row("b", [0.0], 0)]
    _act(join, rows)
    for _ in range(6):
        clock.t += 0.01
        try:
            _act(join, [_row("a", [1.0], None, 1.0), _row("b", [1.0], None, 1.0)])
        except FeedbackRejected as exc:
            assert exc.status == 429 and exc.retry_after_s > 0
            break
    else:
        pytest.fail("10 steps/s let 12 steps through in 0.06 s")


def test_the_gate_slice_is_a_stable_share_of_episodes():
    join, _ = _join(holdout=0.3, for_gate=True)
    ids = join.start([None] * 1000, "c", "count")
    held = [join.open[e].held_out for e in ids]
    assert 0.25 < sum(held) / len(held) < 0.35
    again, _ = _join(holdout=0.3)
    assert [again._held_out(e) for e in ids] == held
    ep = ids[held.index(True)]
    _act(join, [_row(ep, [0.0], 0)])
    plan = join.plan_steps([_row(ep, [1.0], 1, 1.0)], "c", "episode_id")
    assert plan.transitions[0]["held_out"]
    join.apply(plan)
    (done,) = join.apply(join.plan_ends([EndRow(ep, 1.0, True, False)], "c", "episode_id"))
    item = join.gate_episode(done)
    assert item["slice"] == "ope" and item["rewards"] == [1.0, 1.0] and item["version"] == 3
    assert item["obs"] == [[0.0], [1.0]] and item["propensities"] == [0.5, 0.5]
