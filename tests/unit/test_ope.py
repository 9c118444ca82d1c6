"""Exploration and off-policy evaluation against hand-computed values and a simulated bandit with known truth."""

import numpy as np
import pytest

from core.stats.exploration import ExplorationSection, choose, serving_distribution
from core.stats.ope import Logged, compare, estimate, per_decision_is, terms


def test_serving_distributions():
    probs = np.array([[0.7, 0.2, 0.1], [0.1, 0.3, 0.6]])
    assert np.array_equal(serving_distribution(probs, ExplorationSection()), [[1, 0, 0], [0, 0, 1]])
    eps = serving_distribution(probs, ExplorationSection(kind="epsilon", epsilon=0.3))
    assert np.allclose(eps[0], [0.8, 0.1, 0.1])
    assert np.allclose(serving_distribution(probs, ExplorationSection(kind="softmax")), probs)  # T=1: the model's belief
    hot = serving_distribution(probs, ExplorationSection(kind="softmax", temperature=2.0))
    assert np.allclose(hot[0], np.sqrt(probs[0]) / np.sqrt(probs[0]).sum())
    floor = serving_distribution(np.array([[1.0, 0.0]]), ExplorationSection(kind="softmax", min_propensity=0.05))
    assert floor.min() > 0.04 and np.isclose(floor.sum(), 1)
    q = serving_distribution(np.array([[1.0, 3.0]]), ExplorationSection(kind="softmax"), log_probs=False)
    assert np.allclose(q, np.exp([1, 3]) / np.exp([1, 3]).sum())
    assert ExplorationSection.model_validate("softmax").kind == "softmax"


def test_choose_draws_each_action_at_its_probability():
    dist = np.tile([[0.5, 0.3, 0.2]], (20000, 1))
    actions, props = choose(dist, np.random.default_rng(0))
    assert np.allclose(np.bincount(actions, minlength=3) / len(actions), [0.5, 0.3, 0.2], atol=0.015)
    assert np.allclose(props, dist[np.arange(len(dist)), actions])


def test_ips_snips_dr_by_hand():
    # two actions; rows: (served a, mu, reward); target puts 1.0 on action 0 everywhere
    logged = Logged.of([0, 1, 0], [0.5, 0.5, 0.25], [1.0, 1.0, 0.0])
    target = np.array([[1.0, 0.0]] * 3)
    num, _ = terms(target, logged, "ips")
    assert np.allclose(num, [2.0, 0.0, 0.0])
    assert estimate(target, logged, "ips", samples=0).value == pytest.approx(2 / 3)
    assert estimate(target, logged, "snips", samples=0).value == pytest.approx(2 / (2 + 0 + 4))
    q = np.array([[0.5, 0.5]] * 3)  # DR: 0.5 + w (r - 0.5) on the target's action, 0.5 elsewhere
    assert estimate(target, logged, "dr", reward_model=q, samples=0).value == pytest.approx((1.5 + 0.5 - 1.5) / 3)


def test_a_labeled_row_is_full_information():
    logged = Logged.of([1, 1], [0.9, 0.9], [0.0, 1.0], labels=[0, 1])
    target = np.array([[0.8, 0.2], [0.3, 0.7]])
    for method in ("ips", "snips", "dr"):
        est = estimate(target, logged, method, reward_model=np.full((2, 2), 0.5), samples=0)
        assert est.value == pytest.approx((0.8 + 0.7) / 2) and est.labeled == 2


def _bandit(n: int, p_label: float, seed: int):
    """Contexts with a known label distribution; a softmax logger and a greedy target of two noisy models."""
    rng = np.random.default_rng(seed)
    truth = rng.dirichlet([0.4, 0.4, 0.4], size=n)  # P(y = k | x)
    y = np.array([rng.choice(3, p=p) for p in truth])
    logger = np.exp(np.log(truth + 1e-3) + rng.normal(0, 0.8, truth.shape))
    logger /= logger.sum(1, keepdims=True)
    served = serving_distribution(logger, ExplorationSection(kind="softmax", min_propensity=0.02))
    a, mu = choose(served, rng)
    r = (a == y).astype(float)
    labels = np.where(rng.random(n) < p_label, y, -1)
    cand = truth + rng.normal(0, 0.15, truth.shape)
    target = np.zeros_like(truth)
    target[np.arange(n), cand.argmax(1)] = 1.0
    true_value = float((target * truth).sum(1).mean())
    return Logged.of(a, mu, r, labels), target, logger, true_value, truth


@pytest.mark.parametrize("method", ["ips", "snips", "dr"])
@pytest.mark.parametrize("p_label", [0.0, 0.3])
def test_estimates_cover_the_truth_on_a_simulated_bandit(method, p_label):
    hits, errors = 0, []
    for seed in range(20):
        logged, target, logger, truth, _ = _bandit(1500, p_label, seed)
        est = estimate(target, logged, method, reward_model=logger, samples=300, seed=seed)
        errors.append(est.value - truth)
        hits += est.low <= truth <= est.high
    assert abs(np.mean(errors)) < 0.02, np.mean(errors)  # no systematic bias
    assert hits >= 16, hits  # a 95 % interval misses rarely


def test_doubly_robust_beats_ips_with_a_good_reward_model():
    logged, target, _, _, truth = _bandit(3000, 0.0, 1)
    ips = estimate(target, logged, "ips", samples=300)
    dr = estimate(target, logged, "dr", reward_model=truth, samples=300)
    assert dr.high - dr.low < 0.85 * (ips.high - ips.low)


def test_compare_is_paired():
    logged, target, logger, _, _ = _bandit(800, 0.3, 2)
    a, b, diff = compare(target, target, logged, "dr", reward_model=logger, samples=200)
    assert a.value == b.value and diff.value == 0.0 and diff.low == diff.high == 0.0
    worse = np.roll(target, 1, axis=1)
    _, _, d = compare(worse, target, logged, "dr", reward_model=logger, samples=200)
    assert d.high < 0


def test_per_decision_importance_sampling():
    on = [(np.ones(3) * 0.5, np.ones(3) * 0.5, np.array([1.0, 1.0, 1.0])),
          (np.ones(2) * 0.5, np.ones(2) * 0.5, np.array([1.0, 0.0]))]
    assert per_decision_is(on, samples=0).value == pytest.approx((3 + 1) / 2)  # on-policy: the mean return
    # target twice as likely at every step of the first episode: rewards weighted 2, 4, 8
    off = [(np.ones(3), np.ones(3) * 0.5, np.array([1.0, 1.0, 1.0])), on[1]]
    assert per_decision_is(off, gamma=1.0, samples=0).value == pytest.approx((2 + 4 + 8 + 1) / 2)
    assert per_decision_is(off, gamma=0.5, samples=0).value == pytest.approx((2 + 2 + 2 + 1) / 2)
    weighted = per_decision_is(off, weighted=True, samples=0).value  # per step: sum(rho r) / sum(rho)
    assert weighted == pytest.approx((2 + 1) / 3 + (4 + 0) / 5 + 8 / 8)


def test_bad_propensities_are_refused():
    with pytest.raises(ValueError, match="propensities"):
        Logged.of([0], [0.0], [1.0])
    with pytest.raises(ValueError, match="reward model"):
        estimate(np.ones((1, 2)) / 2, Logged.of([0], [0.5], [1.0]), "dr")


def _stream(test, p_live: float, p_cand: float, share: float, rng, limit: int = 20000):
    """Feed Bernoulli rewards until the test decides; returns (decision, candidate requests)."""
    for _ in range(limit):
        arm = "candidate" if rng.random() < share else "live"
        test.add(arm, float(rng.random() < (p_cand if arm == "candidate" else p_live)))
        decision, _ = test.decision()
        if decision != "continue":
            return decision, test.candidate.n
    return "continue", test.candidate.n


def test_canary_aborts_a_poisoned_candidate_within_a_few_dozen_requests():
    from core.stats.sequential import CanaryTest

    exposures = []
    for seed in range(20):
        decision, n = _stream(CanaryTest(), 0.8, 0.3, 0.2, np.random.default_rng(seed))
        assert decision == "abort"
        exposures.append(n)
    assert np.median(exposures) <= 60, exposures


def test_canary_error_rates_hold_under_continuous_monitoring():
    from core.stats.sequential import CanaryTest

    rng = np.random.default_rng(0)
    equal = [_stream(CanaryTest(max_requests=1500), 0.8, 0.8, 0.2, rng)[0] for _ in range(40)]
    assert equal.count("abort") <= 2  # alpha 0.05, read after every request
    worse = [_stream(CanaryTest(max_requests=3000), 0.8, 0.7, 0.2, rng)[0] for _ in range(20)]
    assert worse.count("abort") >= 18  # 10 points worse: caught before the cap


def test_confidence_sequence_covers_the_mean_at_all_times():
    from core.stats.sequential import Arm

    misses = 0
    for seed in range(100):
        rng, arm = np.random.default_rng(seed), Arm()
        for _ in range(2000):
            arm.add(float(rng.random() < 0.7))
            lo, hi = arm.interval(0.05, 500)
            if not lo <= 0.7 <= hi:
                misses += 1
                break
    assert misses <= 8  # at most alpha of the runs ever leave it (asymptotically; a little slack)
