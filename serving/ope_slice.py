"""The gate's off-policy slice: live feedback held out of training, to judge a candidate counterfactually.

The joiner keeps `gate.ope.fraction` of joined feedback (by a hash of the event
id) out of the replay store and hands it here, with what was served: the
action, the probability it was served with, and the reward (or label).  A
candidate is judged on it against live:

    targets      each model's greedy answer on the slice's texts (what it would serve)
    reward model live's class probabilities (the doubly robust estimate's q)
    estimate     core.stats.ope.compare: candidate and live values and the paired difference, with a
                 bootstrap interval; refuse when the whole interval lies below -tolerance, or
                 when the observed difference does (the held-out stage's rule, core/stats/paired.py:
                 a candidate is never promoted on the strength of a wide interval alone)

Labeled rows count as full information (the label names the reward of every
answer); reward-only rows (`p_label: 0`) are reweighted by their propensity.
With greedy serving every propensity is 1 and only rows where the candidate
agrees with what was served say anything about it: serve with exploration.

Plain logic; `serving/gate_ope.py` owns one per policy.
"""

from __future__ import annotations

import threading
from collections import deque
from dataclasses import dataclass
from typing import Any, Iterable, Mapping

import numpy as np

from core.config.feedback import GateSection
from core.stats.ope import Estimate, Logged, compare
from core.models.classifier import ClassifierBundle
from core.data.inputs import TextInput, input_of_row


@dataclass(frozen=True)
class OPEVerdict:
    decision: str  # promote | refuse
    reason: str
    evidence: dict[str, Any]


class OPESlice:
    def __init__(self, size: int, min_rows: int):
        self.rows: deque[tuple[TextInput, int, float, float, int]] = deque(maxlen=size)  # input, a, mu, r, label
        self.min_rows = min_rows
        self._lock = threading.Lock()  # the joiner's rows arrive on another gate thread while a candidate is scored

    def add(self, rows: Iterable[Mapping[str, Any]]) -> int:
        """Joined rows: text, prediction (the served label), propensity, and label and / or reward."""
        added = 0
        for r in rows:
            label = -1 if r.get("label") is None else int(r["label"])
            action = int(r["prediction"])
            reward = float(action == label) if label >= 0 else r.get("reward")
            mu = r.get("propensity")
            if reward is None or mu is None or not 0 < float(mu) <= 1:
                continue  # nothing to learn from, or logged before propensities were
            with self._lock:
                self.rows.append((input_of_row(r), action, float(mu), float(reward), label))
            added += 1
        return added

    def ready(self) -> bool:
        with self._lock:
            return len(self.rows) >= self.min_rows

    def judge(self, candidate: ClassifierBundle, live: ClassifierBundle, cfg: GateSection,
              seed: int = 0) -> OPEVerdict:
        ope = cfg.ope
        with self._lock:
            rows = list(self.rows)  # both models are scored on the same rows
        if len(rows) < self.min_rows:
            return OPEVerdict("refuse", f"not enough off-policy evidence yet: {len(rows)} of "
                                        f"{self.min_rows} held-back feedback rows", {"n": len(rows)})
        texts, actions, mu, rewards, labels = zip(*rows)
        logged = Logged.of(actions, mu, rewards, labels)
        live_probs = live.predict_proba(list(texts))
        cand_probs = candidate.predict_proba(list(texts))
        c, l, d = compare(greedy(cand_probs), greedy(live_probs), logged, ope.method, reward_model=live_probs,
                          samples=ope.bootstrap_samples, level=ope.level, seed=seed)
        return decide(c, l, d, cfg.tolerance, "off-policy")


def decide(c: Estimate, l: Estimate, d: Estimate, tolerance: float, what: str) -> OPEVerdict:
    """The decision rule on a paired comparison (candidate, live, candidate - live): refuse when the
    whole interval on the difference lies below -tolerance, or the observed difference does (the
    held-out stage's rule: never promoted on the strength of a wide interval alone)."""
    evidence = {"method": d.method, "n": d.n, "labeled": d.labeled, "ess": round(d.ess, 1),
                "candidate": round(c.value, 4), "candidate_ci": [round(c.low, 4), round(c.high, 4)],
                "live": round(l.value, 4), "diff": round(d.value, 4), "diff_ci": [round(d.low, 4), round(d.high, 4)],
                "level": d.level}
    summary = (f"{what} ({d.method}, {d.n} rows, {d.labeled} labeled): candidate {c.value:.3f}, "
               f"live {l.value:.3f}, diff {d.value:+.3f} [{d.low:+.3f}, {d.high:+.3f}]")
    if d.high < -tolerance:
        return OPEVerdict("refuse", f"{summary}: worse than live beyond {tolerance:.3f}", evidence)
    if d.value < -tolerance:
        return OPEVerdict("refuse", f"{summary}: observed worse than live beyond {tolerance:.3f}", evidence)
    return OPEVerdict("promote", f"{summary}: not worse than live beyond {tolerance:.3f}", evidence)


def greedy(probs: np.ndarray) -> np.ndarray:
    """[N, K] one-hot of each row's argmax: the policy that answers its most probable class."""
    out = np.zeros_like(probs, dtype=np.float64)
    out[np.arange(len(probs)), probs.argmax(1)] = 1.0
    return out
