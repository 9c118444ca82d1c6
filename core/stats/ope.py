"""Off-policy evaluation: a policy's expected reward on traffic another policy answered.

Logged feedback row i: the context x_i, the served action a_i, the probability mu_i it was
served with (`propensity`, core/stats/exploration.py), its reward r_i, and sometimes the true
label y_i.  A target policy pi gives each row a distribution pi(.|x_i) [K].

    IPS    term_i = pi(a_i|x_i) / mu_i * r_i                       unbiased; variance grows with 1/mu
    SNIPS  sum_i w_i r_i / sum_i w_i  (w_i = pi(a_i|x_i) / mu_i)    biased O(1/n), far less variance
    DR     term_i = sum_k pi(k|x_i) q(x_i, k) + w_i (r_i - q(x_i, a_i))
                                                                  unbiased if mu is right *or* q is;
                                                                  q: a reward model (for a classifier,
                                                                  a model's class probabilities)

A labeled row is full information: the reward of every action is known (1 for the label),
so its term is pi(y_i|x_i) in every method; only reward-only rows are reweighted.
Whether a row carries a label is random (`p_label`) and independent of x, so the
mixture stays unbiased.  Intervals: percentile bootstrap over rows (fixed seed).
`compare` bootstraps the paired difference of two targets on the same rows.

Sequences (a generator's completions): `compare_sequences` weighs each logged completion by
exp(log pi(completion) - log mu(completion)), the sum of its tokens' log-ratios, cut at
`max_weight`; IPS or SNIPS, the paired difference of two targets bootstrapped on the same rows.

RL: `per_decision_is` weights each reward by the product of the ratios up to its step
(Precup et al. 2000), over episodes; `weighted=True` normalises per step (WPDIS).

Plain numpy: the gate (serving/) and the benchmark call it.
"""

from __future__ import annotations

import math
from dataclasses import asdict, dataclass
from typing import Literal, Sequence

import numpy as np

Method = Literal["ips", "snips", "dr"]
MAX_LOG_WEIGHT = 700.0  # exp of more overflows a float64


@dataclass(frozen=True)
class Logged:
    actions: np.ndarray  # [N] int: the served action
    propensities: np.ndarray  # [N] float in (0, 1]: its probability when it was served
    rewards: np.ndarray  # [N] float: the reward observed for the served action
    labels: np.ndarray  # [N] int: the true label, -1 where only a reward came back

    @classmethod
    def of(cls, actions, propensities, rewards, labels=None) -> "Logged":
        a = np.asarray(actions, dtype=np.int64)
        mu = np.asarray(propensities, dtype=np.float64)
        if a.ndim != 1 or mu.shape != a.shape:
            raise ValueError("actions and propensities must be [N] each")
        if np.any(~np.isfinite(mu)) or np.any(mu <= 0) or np.any(mu > 1):
            raise ValueError("propensities must be in (0, 1]")
        y = np.full(a.shape, -1, np.int64) if labels is None else np.asarray(labels, dtype=np.int64)
        r = np.asarray(rewards, dtype=np.float64)
        return cls(a, mu, r, y)

    def __len__(self) -> int:
        return len(self.actions)


@dataclass(frozen=True)
class Estimate:
    value: float
    low: float
    high: float
    method: str
    n: int
    labeled: int  # rows with full information
    ess: float  # effective sample size of the reward-only rows' weights (Kish)
    level: float = 0.95

    def to_dict(self) -> dict:
        return {k: (round(v, 6) if isinstance(v, float) else v) for k, v in asdict(self).items()}


def terms(target: np.ndarray, logged: Logged, method: Method = "dr",
          reward_model: np.ndarray | None = None) -> tuple[np.ndarray, np.ndarray]:
    """(numerator [N], weight [N]): value = sum(num) / sum(weight) for SNIPS, mean(num) otherwise.

    `target` [N, K]: pi(.|x_i).  `reward_model` [N, K] (DR only): q(x_i, k) in [0, 1]."""
    target = np.asarray(target, dtype=np.float64)
    n = len(logged)
    if target.shape[0] != n:
        raise ValueError(f"target has {target.shape[0]} rows for {n} logged rows")
    rows = np.arange(n)
    w = target[rows, logged.actions] / logged.propensities
    num = w * logged.rewards
    if method == "dr":
        if reward_model is None:
            raise ValueError("dr needs a reward model [N, K]")
        q = np.asarray(reward_model, dtype=np.float64)
        num = (target * q).sum(1) + w * (logged.rewards - q[rows, logged.actions])
    weight = w if method == "snips" else np.ones(n)
    known = logged.labels >= 0
    num = np.where(known, target[rows, np.where(known, logged.labels, 0)], num)
    weight = np.where(known, 1.0, weight)
    return num, weight


def _value(num: np.ndarray, weight: np.ndarray, known: np.ndarray, method: Method) -> float:
    if method != "snips":
        return float(num.mean())
    # labeled rows count once each; the reward-only rows' share is their self-normalised mean
    k, r = known, ~known
    part = float(num[r].sum() / weight[r].sum()) if weight[r].sum() > 0 else 0.0
    return float((num[k].sum() + r.sum() * part) / len(num))


def estimate(target: np.ndarray, logged: Logged, method: Method = "dr", reward_model: np.ndarray | None = None,
             samples: int = 1000, level: float = 0.95, seed: int = 0) -> Estimate:
    num, weight = terms(target, logged, method, reward_model)
    known = logged.labels >= 0
    value = _value(num, weight, known, method)
    boot = _bootstrap(lambda idx: _value(num[idx], weight[idx], known[idx], method), len(num), samples, seed)
    low, high = _interval(boot, level, value)
    return Estimate(value, low, high, method, len(num), int(known.sum()), _ess(target, logged), level)


def compare(target_a: np.ndarray, target_b: np.ndarray, logged: Logged, method: Method = "dr",
            reward_model: np.ndarray | None = None, samples: int = 1000, level: float = 0.95,
            seed: int = 0) -> tuple[Estimate, Estimate, Estimate]:
    """(a, b, a - b): both values and their paired difference, bootstrapped on the same rows."""
    num_a, w_a = terms(target_a, logged, method, reward_model)
    num_b, w_b = terms(target_b, logged, method, reward_model)
    known = logged.labels >= 0

    def diff(idx: np.ndarray) -> float:
        return _value(num_a[idx], w_a[idx], known[idx], method) - _value(num_b[idx], w_b[idx], known[idx], method)

    boot = _bootstrap(diff, len(num_a), samples, seed)
    everything = np.arange(len(num_a))
    d = diff(everything)
    lo, hi = _interval(boot, level, d)
    a = estimate(target_a, logged, method, reward_model, samples, level, seed)
    b = estimate(target_b, logged, method, reward_model, samples, level, seed)
    return a, b, Estimate(d, lo, hi, method, len(num_a), int(known.sum()), min(a.ess, b.ess), level)


def per_decision_is(episodes: Sequence[tuple[np.ndarray, np.ndarray, np.ndarray]], gamma: float = 1.0,
                    weighted: bool = False, samples: int = 1000, level: float = 0.95, seed: int = 0) -> Estimate:
    """Episodes of (target probability of each taken action [T], behaviour propensity [T], reward [T])."""
    if not episodes:
        raise ValueError("per-decision importance sampling needs at least one episode")
    horizon = max(len(r) for _, _, r in episodes)
    rho = np.zeros((len(episodes), horizon))  # cumulative ratios; 0 past an episode's end
    rew = np.zeros((len(episodes), horizon))
    for i, (pi, mu, r) in enumerate(episodes):
        t = len(r)
        rho[i, :t] = np.cumprod(np.asarray(pi, np.float64) / np.asarray(mu, np.float64))
        rew[i, :t] = r
    disc = gamma ** np.arange(horizon)

    def value(idx: np.ndarray) -> float:
        p, r = rho[idx], rew[idx]
        if weighted:
            norm = p.sum(0)
            step = np.divide((p * r).sum(0), norm, out=np.zeros(horizon), where=norm > 0)
            return float((disc * step).sum())
        return float((p * r * disc).sum(1).mean())

    v = value(np.arange(len(episodes)))
    low, high = _interval(_bootstrap(value, len(episodes), samples, seed), level, v)
    final = rho[np.arange(len(episodes)), [len(r) - 1 for _, _, r in episodes]]
    ess = float(final.sum() ** 2 / max((final**2).sum(), 1e-300))
    return Estimate(v, low, high, "wpdis" if weighted else "pdis", len(episodes), 0, ess, level)


def compare_sequences(log_ratios_a: np.ndarray, log_ratios_b: np.ndarray, rewards: np.ndarray,
                      method: Method = "snips", max_weight: float | None = None, samples: int = 1000,
                      level: float = 0.95, seed: int = 0) -> tuple[Estimate, Estimate, Estimate]:
    """(a, b, a - b) on logged sequences: `log_ratios_*` [N] are log pi(sequence) - log mu(sequence)
    of each target, `rewards` [N] each sequence's reward.  `method` ips or snips (no reward model of
    sequences here: dr is refused); a weight above `max_weight` counts as `max_weight`."""
    if method not in ("ips", "snips"):
        raise ValueError(f"sequences are estimated by ips or snips, not {method!r}")
    r = np.asarray(rewards, dtype=np.float64)
    cap = math.log(max_weight) if max_weight is not None else MAX_LOG_WEIGHT
    w_a, w_b = (np.exp(np.minimum(np.asarray(x, dtype=np.float64), min(cap, MAX_LOG_WEIGHT)))
                for x in (log_ratios_a, log_ratios_b))
    if not (w_a.shape == w_b.shape == r.shape and r.ndim == 1 and r.size > 0):
        raise ValueError("each target needs one log-ratio per logged sequence, and at least one sequence")
    if not (np.isfinite(r).all() and not np.isnan(w_a).any() and not np.isnan(w_b).any()):
        raise ValueError("log-ratios and rewards must be numbers (a log-ratio may be -inf: weight 0)")

    def value(w: np.ndarray, idx: np.ndarray) -> float:
        if method == "ips":
            return float((w[idx] * r[idx]).mean())
        total = w[idx].sum()
        return float((w[idx] * r[idx]).sum() / total) if total > 0 else 0.0

    def one(w: np.ndarray) -> Estimate:
        v = value(w, np.arange(r.size))
        low, high = _interval(_bootstrap(lambda idx: value(w, idx), r.size, samples, seed), level, v)
        return Estimate(v, low, high, method, int(r.size), 0, _kish(w), level)

    a, b = one(w_a), one(w_b)
    diff = a.value - b.value
    low, high = _interval(_bootstrap(lambda idx: value(w_a, idx) - value(w_b, idx), r.size, samples, seed),
                          level, diff)
    return a, b, Estimate(diff, low, high, method, int(r.size), 0, min(a.ess, b.ess), level)


def _kish(w: np.ndarray) -> float:
    return float(w.sum() ** 2 / max((w**2).sum(), 1e-300))


def _bootstrap(stat, n: int, samples: int, seed: int) -> np.ndarray:
    rng = np.random.default_rng(seed)
    return np.array([stat(rng.integers(0, n, n)) for _ in range(samples)]) if samples > 0 and n > 0 else np.zeros(0)


def _interval(boot: np.ndarray, level: float, value: float) -> tuple[float, float]:
    if boot.size == 0:
        return value, value
    tail = (1 - level) / 2
    return float(np.quantile(boot, tail)), float(np.quantile(boot, 1 - tail))


def _ess(target: np.ndarray, logged: Logged) -> float:
    r = logged.labels < 0
    if not r.any():
        return 0.0
    w = np.asarray(target, np.float64)[np.arange(len(logged)), logged.actions][r] / logged.propensities[r]
    return float(w.sum() ** 2 / max((w**2).sum(), 1e-300))
