"""The reward rule (feedback -> rewarded completions) and the baselines (group-relative, running)."""

import math

import numpy as np
import pytest

from core.config.generate import GenerateSection
from core.data.completion_rewards import RewardRule
from core.stats.advantages import RunningBaseline, advantages


def _row(**feedback):
    row = {"event_id": "e1", "group_id": "g1", "prompt_ids": [2, 5], "token_ids": [7, 3], "logprobs": [-1.0, -0.5],
           "policy_version": 4, "thumbs_up": None, "reward": None, "rejected_event_id": None,
           "rejected_token_ids": None, "rejected_logprobs": None, "rejected_policy_version": None}
    return {**row, **feedback}


def test_thumbs_and_a_scalar_reward_by_the_configured_rule():
    rule = RewardRule.from_section(GenerateSection(learning={"thumbs_up_reward": 2.0, "thumbs_down_reward": -1.0,
                                                             "reward_min": 0.2, "reward_max": 0.8}).learning)
    (up,) = rule.scored(_row(feedback="thumbs", thumbs_up=True))
    (down,) = rule.scored(_row(feedback="thumbs", thumbs_up=False))
    assert (up.reward, down.reward) == (2.0, -1.0)
    assert up.group == "g1" and up.policy_version == 4 and not up.relative and list(up.token_ids) == [7, 3]
    assert [rule.scored(_row(feedback="reward", reward=r))[0].reward for r in (0.0, 0.5, 1.0)] == [0.2, 0.5, 0.8]


def test_a_preference_scores_both_completions_as_a_pair_of_their_own():
    rule = RewardRule(preference=0.5)
    chosen, rejected = rule.scored(_row(feedback="preference", rejected_event_id="e2", rejected_token_ids=[9],
                                        rejected_logprobs=[-2.0], rejected_policy_version=3))
    assert (chosen.reward, rejected.reward) == (0.5, -0.5)
    assert chosen.group == rejected.group != "g1"  # compared with each other only
    assert list(rejected.token_ids) == [9] and list(rejected.logprobs) == [-2.0] and rejected.policy_version == 3
    assert chosen.relative and rejected.relative
    assert list(chosen.prompt_ids) == list(rejected.prompt_ids) == [2, 5]


@pytest.mark.parametrize("row", [_row(feedback="reward", reward=math.nan), _row(feedback="reward", reward=math.inf),
                                 _row(feedback="reward"), _row(feedback="thumbs"), _row(feedback="preference"),
                                 _row(feedback="something else", reward=1.0)])
def test_a_row_without_a_finite_reward_gives_nothing(row):
    assert RewardRule().scored(row) == []


def test_the_rule_refuses_a_range_that_is_not_one():
    with pytest.raises(ValueError, match="reward_min"):
        GenerateSection(learning={"reward_min": 1.0, "reward_max": 1.0})
    with pytest.raises(ValueError, match="thumbs_up_reward"):
        GenerateSection(learning={"thumbs_up_reward": math.nan})
    with pytest.raises(ValueError, match="dual_clip"):
        GenerateSection(learning={"dual_clip": 1.1, "clip_epsilon": 0.2})


def test_a_constant_reward_in_a_group_gives_zero_advantage():
    adv, grouped = advantages(np.array([1.0, 1.0, 1.0, 0.3]), ["a", "a", "a", "b"], running_baseline=0.5)
    np.testing.assert_allclose(adv, [0.0, 0.0, 0.0, -0.2], atol=1e-6)
    assert grouped.tolist() == [True, True, True, False]
    adv, _ = advantages(np.array([0.7, 0.7]), ["a", "a"], running_baseline=0.0, group_std=False)
    np.testing.assert_allclose(adv, [0.0, 0.0])


def test_group_advantages_centre_and_optionally_scale():
    r = np.array([1.0, 0.0, 0.0, 0.0, 0.5, -0.5])
    g = ["p", "p", "p", "p", "pair", "pair"]
    adv, _ = advantages(r, g, running_baseline=0.9)
    np.testing.assert_allclose(adv[:4], (r[:4] - 0.25) / np.std(r[:4]), rtol=1e-6)
    np.testing.assert_allclose(adv[4:], [1.0, -1.0], rtol=1e-6)  # a preference pair: +1 / -1
    adv, _ = advantages(r, g, running_baseline=0.9, group_std=False)
    np.testing.assert_allclose(adv, [0.75, -0.25, -0.25, -0.25, 0.5, -0.5], rtol=1e-6)


def test_a_nan_reward_is_not_hidden_by_its_group():
    for std in (True, False):
        adv, _ = advantages(np.array([1.0, math.nan, 1.0, 0.0]), ["a", "a", "b", "c"], 0.5, group_std=std)
        assert np.isnan(adv[:2]).all() and adv[2:].tolist() == [0.5, -0.5]


def test_the_running_baseline_moves_towards_the_rewards():
    b = RunningBaseline(0.5, 0.9)
    b.update(np.array([1.0, 1.0]))
    assert b.value == pytest.approx(0.81 * 0.5 + 0.19 * 1.0)
    b.update(np.array([math.nan]))  # no finite reward: no move
    assert b.value == pytest.approx(0.595)


def test_a_group_split_across_batches_is_centred_on_every_reward_seen_of_it():
    from core.stats.advantages import GroupRewards

    memory = GroupRewards(max_groups=2)
    memory.add(["g", "g"], ["e1", "e2"], np.array([1.0, 0.0]))  # an earlier batch held two of g's completions
    memory.add(["g"], ["e3"], np.array([0.5]))  # this batch holds the third, alone
    adv, grouped = advantages(np.array([0.5]), ["g"], running_baseline=0.9, pools=memory.pools(["g"]))
    assert grouped.tolist() == [True] and adv[0] == pytest.approx(0.0)  # the pool's mean is 0.5
    memory.add(["g"], ["e3"], np.array([0.5]))  # sampled again: counted once
    assert sorted(memory.pools(["g"])["g"].tolist()) == [0.0, 0.5, 1.0]
    adv, _ = advantages(np.array([1.0]), ["g"], 0.9, group_std=False, pools=memory.pools(["g"]))
    assert adv[0] == pytest.approx(0.5)
    memory.add(["h"], ["x"], np.array([1.0]))
    memory.add(["k"], ["y"], np.array([1.0]))  # past max_groups: the oldest group (g) is forgotten
    assert "g" not in memory.pools(["g", "h", "k"])
    adv, grouped = advantages(np.array([1.0]), ["k"], 0.25, pools=memory.pools(["k"]))
    assert not grouped[0] and adv[0] == pytest.approx(0.75)  # alone in its pool: the running baseline
