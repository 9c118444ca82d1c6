"""The RL gate's off-policy stage: a candidate's value on episodes the live policy served on `/act`.

    episode   what a client logged: the observation of every step, the action served, the
              probability it was served with (the live policy's exploration), the reward
    target    the candidate as it would be served: its Q-values through the same
              `serving.exploration` (a greedy target would have weight 0 on every explored step)
    estimate  core.stats.ope.per_decision_is (unweighted: unbiased, so a candidate that diverges from
              live early is not credited with live's long episodes) of the return scaled to
              [0, 1] by `rl.gate.return_range`, against live's mean on the same episodes

    refuse        enough effective episodes (`min_ess`) and the interval's upper end below
                  live - tolerance
    inconclusive  fewer effective episodes: importance weights over long episodes collapse onto
                  a few (the curse of horizon), and they say nothing either way; the next stage
                  (the canary, on-policy) decides
    pass          otherwise
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any, Mapping, Sequence

import numpy as np

from core.stats.exploration import ExplorationSection, serving_distribution
from core.stats.ope import per_decision_is
from core.config.rl_gate import RLGateSection
from core.models.q import PolicySpec
from core.models.q_policy import QPolicy


@dataclass(frozen=True)
class Episode:
    version: int | None
    obs: np.ndarray  # [T, obs width]
    actions: np.ndarray  # [T]
    propensities: np.ndarray  # [T]
    rewards: np.ndarray  # [T]

    @property
    def ret(self) -> float:
        return float(self.rewards.sum())

    @classmethod
    def of(cls, ep: Mapping[str, Any]) -> "Episode":
        obs = np.asarray(ep["obs"], dtype=np.float32)
        episode = cls(ep.get("version"), obs.reshape(len(obs), -1), np.asarray(ep["actions"], dtype=np.int64),
                      np.asarray(ep["propensities"], dtype=np.float64), np.asarray(ep["rewards"], dtype=np.float64))
        t = len(episode.actions)
        if t == 0 or len(episode.obs) != t or len(episode.propensities) != t or len(episode.rewards) != t:
            raise ValueError("an episode needs one observation, action, propensity and reward per step")
        if not ((episode.propensities > 0) & (episode.propensities <= 1)).all():
            raise ValueError("propensities must lie in (0, 1]")
        return episode


def scaled(ret: float, returns: tuple[float, float]) -> float:
    """A return on the gate's [0, 1] scale, clipped."""
    low, high = returns
    return min(max((ret - low) / (high - low), 0.0), 1.0)


def judge_offpolicy(weights: Mapping[str, Any], spec: dict, episodes: Sequence[Episode],
                    exploration: ExplorationSection, cfg: RLGateSection, returns: tuple[float, float],
                    seed: int = 0) -> dict:
    """The stage's verdict: decision (pass | refuse), reason and evidence."""
    ope = cfg.ope
    if len(episodes) < ope.min_episodes:
        return {"decision": "refuse", "n": len(episodes),
                "reason": f"not enough off-policy evidence yet: {len(episodes)} of {ope.min_episodes} live episodes"}
    policy = QPolicy(PolicySpec.from_dict(spec), weights)
    low, high = returns
    logged = []
    for ep in episodes:
        dist = serving_distribution(policy.q_values(ep.obs), exploration, log_probs=False)
        # rewards rescaled so that a return maps like `scaled` (the low end spread over the steps)
        step_rewards = (ep.rewards - low / len(ep.rewards)) / (high - low)
        logged.append((dist[np.arange(len(ep.actions)), ep.actions], ep.propensities, step_rewards))
    est = per_decision_is(logged, samples=ope.bootstrap_samples, level=ope.level, seed=seed)
    live = float(np.mean([scaled(ep.ret, returns) for ep in episodes]))
    evidence = {"method": "pdis", "n": est.n, "ess": round(est.ess, 1), "candidate": round(est.value, 4),
                "candidate_ci": [round(est.low, 4), round(est.high, 4)], "live": round(live, 4),
                "diff": round(est.value - live, 4), "level": ope.level}
    said = (f"off-policy (pdis, {est.n} episodes, ess {est.ess:.1f}): candidate {est.value:.3f} "
            f"[{est.low:.3f}, {est.high:.3f}], live {live:.3f}")
    if est.ess < ope.min_ess:
        return {"decision": "pass", "verdict": "inconclusive", **evidence,
                "reason": f"{said}: inconclusive (fewer than {ope.min_ess:g} effective episodes)"}
    if est.high < live - cfg.tolerance:
        return {"decision": "refuse", "verdict": "worse", **evidence,
                "reason": f"{said}: worse than live beyond {cfg.tolerance:.3f}"}
    return {"decision": "pass", "verdict": "not worse", **evidence,
            "reason": f"{said}: not worse than live beyond {cfg.tolerance:.3f}"}
