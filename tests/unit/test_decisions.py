"""The decision policy's core: features and their errors, exploration, the scorer, a simulated stream."""

import math

import numpy as np
import pytest

from core.config.decisions import DecisionExploreSection, DecisionModelSection
from core.decisions.explore import choose, distribution
from core.decisions.features import FeatureError, FeatureSpace, namespaces
from core.decisions.linear import LinearScorer
from core.decisions.policy import DecisionPolicy
from core.decisions.simulate import INTERACTIONS, drift_at, rounds, uniform_reward

ACTIONS = [{"id": "a", "features": {"item": {"topic": "news"}}}, {"id": "b", "features": {"item": {"topic": "sport"}}}]


def policy(**explore) -> DecisionPolicy:
    return DecisionPolicy(DecisionModelSection(bits=12, interactions=[["user", "item"]]),
                          DecisionExploreSection(**explore), max_actions=8)


@pytest.mark.parametrize("context, actions, exclude, field", [
    ({}, [], (), "actions"),
    ({}, [{"id": "a"}, {"id": "a"}], (), "actions[1].id"),
    ({}, [{"id": str(i)} for i in range(9)], (), "actions"),
    ({}, [{"features": {}}], (), "actions[0].id"),
    ({"user": {"age": math.nan}}, ACTIONS, (), "context.user.age"),
    ({"user": {"age": 1e300}}, ACTIONS, (), "context.user.age"),
    ({"user": {"where": {"city": "x"}}}, ACTIONS, (), "context.user.where"),
    ({"user": {"tags": ["a", 3]}}, ACTIONS, (), "context.user.tags[1]"),
    ({"user": ["a"]}, ACTIONS, (), "context.user"),
    ({}, [{"id": "a", "features": {"item": {"price": None}}}], (), "actions[0].features.item.price"),
    ({}, ACTIONS, ("a", "b"), "exclude"),
])
def test_a_request_the_policy_cannot_take_names_its_field(context, actions, exclude, field):
    with pytest.raises(FeatureError) as err:
        policy().request(context, actions, exclude)
    assert err.value.field == field, err.value


def test_numbers_strings_and_lists_hash_alike_in_every_process_and_crosses_differ_by_order():
    ns = namespaces({"u": {"age": 3, "country": "de", "tags": ["x", "y"], "vip": True}}, "context")["u"]
    assert ns.values.tolist() == [3.0, 1.0, 1.0, 1.0, 1.0] and len(set(ns.hashes.tolist())) == 5
    again = namespaces({"u": {"age": 3, "country": "de", "tags": ["x", "y"], "vip": True}}, "context")["u"]
    assert ns.hashes.tolist() == again.hashes.tolist()
    one, two = {"p": namespaces({"p": {"f": 1}}, "c")["p"]}, {"q": namespaces({"q": {"g": 2}}, "c")["q"]}
    ab = FeatureSpace(20, [["p", "q"]]).encode(one, [two])
    ba = FeatureSpace(20, [["q", "p"]]).encode(one, [two])
    assert ab.value.tolist() == [1.0, 2.0, 2.0] and ab.index[2] != ba.index[2]


def test_excluded_actions_are_never_served_and_the_distribution_sums_to_one():
    pol, rng = policy(kind="epsilon", epsilon=0.5), np.random.default_rng(0)
    req = pol.request({"user": {"age": 1}}, ACTIONS + [{"id": "c"}], exclude=["b"])
    assert req.ids == ["a", "c"]
    for _ in range(50):
        d = pol.decide(req, rng)
        assert d.action in ("a", "c") and math.isclose(sum(d.probabilities), 1.0)
        assert d.propensity == d.probabilities[d.chosen] and sorted(d.ranking) == ["a", "c"]


@pytest.mark.parametrize("kind", ["epsilon", "softmax", "squarecb"])
def test_each_exploration_favours_the_best_action_and_leaves_every_other_a_chance(kind):
    p = distribution(np.array([0.1, 0.9, 0.5]), DecisionExploreSection(kind=kind), decisions=100)
    assert math.isclose(p.sum(), 1.0) and p.argmax() == 1 and (p > 0).all()
    if kind != "epsilon":
        assert p[2] > p[0]  # a nearer second gets more than a far third (epsilon spreads evenly)
    even = distribution(np.zeros(4), DecisionExploreSection(kind=kind))
    assert np.allclose(even, 0.25)  # a fresh policy explores evenly


def test_squarecb_narrows_as_the_scorer_learns():
    cfg = DecisionExploreSection(kind="squarecb")
    early, late = (distribution(np.array([1.0, 0.5]), cfg, n)[1] for n in (1, 10_000))
    assert late < early / 10


def test_choose_draws_from_the_distribution():
    rng = np.random.default_rng(1)
    draws = [choose(np.array([0.2, 0.0, 0.8]), rng) for _ in range(2000)]
    assert 1 not in draws and abs(draws.count(2) / 2000 - 0.8) < 0.03


def test_the_scorer_regresses_the_reward_and_a_large_importance_never_overshoots():
    pol = policy()
    req = pol.request({"user": {"age": 1.0}}, ACTIONS)
    for _ in range(200):
        pol.learn(req, 0, 1.0, 0.5)
        pol.learn(req, 1, 0.0, 0.5)
    assert pol.scorer.predict(req.encoded)[0] > 0.9 and abs(pol.scorer.predict(req.encoded)[1]) < 0.1
    fresh = LinearScorer(DecisionModelSection(bits=12, max_importance=100))
    fresh.learn(req.encoded, 0, 1.0, 0.001)  # importance 100: the step stops at the target
    assert 0 < fresh.predict(req.encoded)[0] <= 1.0 + 1e-6


def test_the_scorer_state_round_trips_and_refuses_another_size():
    pol = policy()
    req = pol.request({"user": {"age": 1.0}}, ACTIONS)
    pol.learn(req, 0, 1.0, 0.5)
    other = LinearScorer(DecisionModelSection(bits=12))
    other.load(pol.scorer.state())
    assert other.predict(req.encoded).tolist() == pol.scorer.predict(req.encoded).tolist() and other.updates == 1
    with pytest.raises(ValueError, match="buckets"):
        LinearScorer(DecisionModelSection(bits=13)).load(pol.scorer.state())


def test_on_a_simulated_stream_the_policy_beats_serving_at_random():
    pol = DecisionPolicy(DecisionModelSection(bits=16, interactions=INTERACTIONS), DecisionExploreSection())
    rng, rewards = np.random.default_rng(0), []
    for r in rounds("image_segments", 3000, seed=0):
        req = pol.request(r.context, r.actions)
        d = pol.decide(req, rng)
        rewards.append(r.reward(d.action))
        pol.learn(req, d.chosen, rewards[-1], d.propensity)
    assert uniform_reward("image_segments") == pytest.approx(1 / 7)
    assert np.mean(rewards[-1000:]) > 0.5  # a seventh at random


def test_streams_say_where_they_drift_and_refuse_an_unknown_name():
    assert drift_at("rbf_drift", 1000) == 500 and drift_at("led", 1000) is None
    first = next(rounds("led", 10, seed=3))
    assert len(first.actions) == 10 and first.reward(first.label) == 1.0
    with pytest.raises(ValueError, match="unknown stream"):
        next(rounds("nope", 10))


def test_a_decisions_loop_section_checks_its_reward_range_and_names_its_route():
    from pydantic import ValidationError

    from core.config.decisions import DecisionServingSection, DecisionsSection

    with pytest.raises(ValidationError, match="reward_min"):
        DecisionServingSection(reward_min=1.0, reward_max=1.0)
    with pytest.raises(ValidationError, match="default_reward"):
        DecisionServingSection(reward_min=0.0, reward_max=1.0, default_reward=2.0)
    loop = DecisionsSection(policy_id="offers")
    assert loop.routes() == ["/v1/decisions/offers"] and loop.published({}) == ["offers"]
    assert loop.gate.stages == ["ope"] and loop.table("decisions") == "decisions"


def test_the_report_reads_the_users_reward_and_the_uniform_policy_from_progress_events():
    from cluster.report_data import decision_reward
    from cluster.report_plots import decision_reward as plot

    events = [{"event": "progress", "time": 100.0 + t, "reward": r, "uniform": 0.2, "version": v}
              for t, r, v in ((5, 0.2, 1), (10, 0.5, 2), (15, 0.6, 2))]
    curves = decision_reward(events, t0=100.0)
    assert curves["users' reward"].x == [5.0, 10.0, 15.0] and curves["uniform"].y == [0.2] * 3
    assert plot("decisions", curves) is not None and plot("decisions", decision_reward([], 0.0)) is None
