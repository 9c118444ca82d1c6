"""The publish gate's statistics: McNemar / bootstrap non-inferiority, min_gain, prequential rollback."""

import math

import numpy as np
import pytest

from core.stats.paired import (
    binom_cdf,
    bootstrap_noninferiority,
    chi2_1_sf,
    compare,
    mcnemar_noninferiority_p,
    prequential_check,
)


def _pairs(n: int, live_acc: float, wins: int, losses: int, seed: int = 0) -> tuple[np.ndarray, np.ndarray]:
    """Live correct on round(live_acc * n) rows; the candidate flips `wins` wrong->right, `losses` right->wrong."""
    rng = np.random.default_rng(seed)
    live = np.zeros(n, dtype=bool)
    live[rng.permutation(n)[: round(live_acc * n)]] = True
    cand = live.copy()
    right, wrong = np.flatnonzero(live), np.flatnonzero(~live)
    cand[rng.choice(wrong, wins, replace=False)] = True
    cand[rng.choice(right, losses, replace=False)] = False
    return cand, live


# ---- distributions -------------------------------------------------------------------------
def test_binomial_cdf_known_values():
    assert binom_cdf(1, 10, 0.5) == pytest.approx(11 / 1024, rel=1e-12)
    assert binom_cdf(0, 5, 0.5) == pytest.approx(1 / 32, rel=1e-12)
    assert binom_cdf(5, 5, 0.3) == 1.0 and binom_cdf(-1, 5, 0.3) == 0.0
    assert binom_cdf(2, 10, 0.0) == 1.0


def test_binomial_cdf_matches_scipy():
    stats = pytest.importorskip("scipy.stats")
    for k, m, p in [(3, 20, 0.4), (30, 100, 0.37), (0, 24, 0.45), (200, 500, 0.45)]:
        assert binom_cdf(k, m, p) == pytest.approx(stats.binom.cdf(k, m, p), rel=1e-9, abs=1e-15)


def test_mcnemar_exact_is_the_binomial_on_discordant_pairs():
    # textbook: b=1, c=9 -> one-sided exact p = P(B <= 1 | 10, 1/2) = 11/1024 (two-sided 0.0215)
    p, name = mcnemar_noninferiority_p(1, 9, 100, tolerance=0.0)
    assert name == "mcnemar-exact" and p == pytest.approx(11 / 1024)


def test_mcnemar_large_counts_is_the_continuity_corrected_chi_square():
    b, c = 40, 60
    p, name = mcnemar_noninferiority_p(b, c, 1000, tolerance=0.0)
    classic = chi2_1_sf((abs(b - c) - 1) ** 2 / (b + c))  # McNemar's chi-square, two-sided
    assert name == "mcnemar-chi2cc" and p == pytest.approx(classic / 2, rel=1e-9)


def test_mcnemar_margin_normal_approximation_close_to_exact():
    b, c, n, tol = 400, 450, 5000, 0.01
    p_approx, _ = mcnemar_noninferiority_p(b, c, n, tol)
    p_exact, _ = mcnemar_noninferiority_p(b, c, n, tol, exact_below=10_000)
    assert abs(p_approx - p_exact) < 0.01


def test_mcnemar_cannot_lose_the_tolerance_with_few_discordant_pairs():
    # 5 discordant pairs of 1000 can cost at most 0.005 < tolerance 0.01
    assert mcnemar_noninferiority_p(0, 5, 1000, 0.01) == (1.0, "mcnemar")
    assert mcnemar_noninferiority_p(0, 0, 1000, 0.0)[0] == 1.0


# ---- the decision rule ----------------------------------------------------------------------
@pytest.mark.parametrize("test", ["mcnemar", "bootstrap"])
def test_identical_candidate_is_promoted(test):
    cand, live = _pairs(500, 0.8, 0, 0)
    r = compare(cand, live, test=test)
    assert r.decision == "promote" and r.diff == 0.0 and r.p_value == 1.0
    assert r.candidate_accuracy == r.live_accuracy == pytest.approx(0.8)


@pytest.mark.parametrize("test", ["mcnemar", "bootstrap"])
def test_poisoned_candidate_twenty_points_worse_is_refused(test):
    cand, live = _pairs(500, 0.8, 10, 110)  # -0.20
    r = compare(cand, live, test=test)
    assert r.decision == "refuse" and r.diff == pytest.approx(-0.2) and r.p_value < 1e-6
    assert "worse than live" in r.reason and (r.wins, r.losses) == (10, 110)


@pytest.mark.parametrize("test", ["mcnemar", "bootstrap"])
def test_slightly_worse_within_tolerance_is_promoted(test):
    cand, live = _pairs(1000, 0.8, 30, 35)  # -0.005, tolerance 0.01
    r = compare(cand, live, test=test, tolerance=0.01)
    assert r.decision == "promote" and r.diff == pytest.approx(-0.005)


@pytest.mark.parametrize("test", ["mcnemar", "bootstrap"])
def test_better_is_promoted(test):
    cand, live = _pairs(1000, 0.7, 80, 20)
    assert compare(cand, live, test=test).decision == "promote"


@pytest.mark.parametrize("test", ["mcnemar", "bootstrap"])
def test_equal_or_better_is_never_refused(test):
    # observed diff >= -tolerance => the upper bound is >= -tolerance: deterministic, any n
    for seed in range(20):
        rng = np.random.default_rng(seed)
        n = int(rng.integers(20, 2000))
        losses = int(rng.integers(0, n // 10 + 1))
        cand, live = _pairs(n, 0.6, losses, losses, seed)
        assert compare(cand, live, test=test, tolerance=0.0).decision == "promote"


def test_observed_loss_beyond_tolerance_is_refused_even_without_evidence():
    # -3 points on 100 rows: the test cannot call it worse (p >= alpha) ...
    cand, live = _pairs(100, 0.8, 2, 5)
    r = compare(cand, live, tolerance=0.01)
    assert r.p_value >= 0.05
    # ... but a promoted version must never be observed worse than its parent beyond the tolerance
    assert r.decision == "refuse" and r.reason.startswith("observed worse")
    # the same -3 points on 10000 rows with the same discordance: the test itself refuses
    cand, live = _pairs(10_000, 0.8, 200, 500)
    r = compare(cand, live, tolerance=0.01)
    assert r.decision == "refuse" and r.test == "mcnemar-chi2cc" and r.reason.startswith("worse than live")
    # exactly at the tolerance: still promoted
    cand, live = _pairs(1000, 0.8, 20, 30)  # -0.01
    assert compare(cand, live, tolerance=0.01).decision == "promote"


def test_min_gain():
    cand, live = _pairs(1000, 0.8, 0, 0)
    r = compare(cand, live, min_gain=0.01)
    assert r.decision == "refuse" and r.reason.startswith("no gain")
    cand, live = _pairs(1000, 0.7, 40, 10)  # +0.03
    assert compare(cand, live, min_gain=0.01).decision == "promote"
    # min_gain 0 (the default) is off: slightly worse within tolerance still goes live
    cand, live = _pairs(1000, 0.8, 30, 35)
    assert compare(cand, live, min_gain=0.0).decision == "promote"


def test_bootstrap_is_seeded_and_its_interval_brackets_the_difference():
    cand, live = _pairs(400, 0.75, 30, 40)
    a = compare(cand, live, test="bootstrap", seed=3)
    b = compare(cand, live, test="bootstrap", seed=3)
    assert a == b and a.ci is not None and a.ci[0] <= a.diff <= a.ci[1]
    p, (lo, hi) = bootstrap_noninferiority(30, 40, 400, 0.01, 0.05, 2000)
    assert 0 < p < 1 and lo < hi
    assert (hi < -0.01) == (p < 0.05) or abs(hi + 0.01) < 0.005  # same rule up to ties at the boundary


def test_result_is_json_ready():
    import json

    cand, live = _pairs(100, 0.8, 3, 4)
    d = compare(cand, live, test="bootstrap").to_dict()
    assert json.loads(json.dumps(d))["decision"] == "promote" and isinstance(d["ci"], list)


def test_bad_input():
    with pytest.raises(ValueError, match="same examples"):
        compare([True, False], [True])
    with pytest.raises(ValueError, match="at least one"):
        compare([], [])
    with pytest.raises(ValueError, match="unknown test"):
        compare([True], [True], test="t")


# ---- prequential -------------------------------------------------------------------------
def test_prequential_waits_for_a_full_window():
    r = prequential_check([False] * 19, measured_accuracy=0.8, window=20, margin=0.1)
    assert not r.rollback and r.events == 19 and "only 19 of 20" in r.reason


def test_prequential_rolls_back_below_measured_minus_margin():
    r = prequential_check([True] * 13 + [False] * 7, 0.8, 20, 0.1)  # 0.65 < 0.70
    assert r.rollback and r.windowed_accuracy == pytest.approx(0.65) and r.threshold == pytest.approx(0.7)
    r = prequential_check([True] * 14 + [False] * 6, 0.8, 20, 0.1)  # 0.70: not below
    assert not r.rollback


def test_prequential_uses_only_the_last_window():
    r = prequential_check([False] * 100 + [True] * 20, 0.8, 20, 0.1)
    assert not r.rollback and r.windowed_accuracy == 1.0 and r.events == 20
    assert math.isclose(prequential_check([True] * 100 + [False] * 20, 0.8, 20, 0.1).windowed_accuracy, 0.0)


def test_prequential_counts_match_flags_and_accept_fractions():
    from core.stats.paired import prequential_check_counts

    flags = [True] * 13 + [False] * 7
    assert prequential_check_counts(13, 20, 0.8, 20, 0.1) == prequential_check(flags, 0.8, 20, 0.1)
    assert prequential_check_counts(14.5, 20, 0.8, 20, 0.1).rollback is False  # 0.725
    with pytest.raises(ValueError, match="more than the window"):
        prequential_check_counts(30, 30, 0.8, 20, 0.1)
