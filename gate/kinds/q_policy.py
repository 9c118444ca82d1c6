"""The Q-policy's gate adapter: `/act` episodes, returns on a [0, 1] scale, no held-out set.

    unit               a finished episode: its score is the return, scaled to [0, 1] by
                       `gate.return_range` and clipped
    logged decision    the episode itself: the observation of every step, the action served, the
                       probability it was served with (the live policy's exploration), the reward;
                       only live's episodes count (live's value is their mean return), and of client
                       episodes only those held out of training (`slice` "ope", serving/episodes.py)
    off-policy         the candidate as it would be served (its Q-values through the same
                       `serving.exploration`: a greedy target would weigh 0 on every explored step),
                       by per-decision importance sampling (unweighted: unbiased, so a candidate that
                       leaves live's path early is not credited with live's long episodes)
    fault              a non-finite weight, or Q-values that overflow on an all-zero observation
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any, Callable, Mapping, Sequence

import numpy as np

from core.config.gate import OPESection
from core.models.q import PolicySpec
from core.models.q_policy import QPolicy
from core.stats.exploration import ExplorationSection, serving_distribution
from core.stats.ope import Estimate, per_decision_is
from gate.evidence import Evidence, unservable
from gate.pointer import GateError


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


class QPolicyKind:
    name = "q_policy"
    unit = "episode"
    logged_units = "live episodes"
    gives = frozenset({"score", "logged", "inputs"})
    heldout = None
    groups = None

    def __init__(self, spec: Mapping[str, Any], exploration: ExplorationSection, return_range: tuple[float, float]):
        self.spec, self.exploration = dict(spec), exploration
        self.range = (float(return_range[0]), float(return_range[1]))

    @classmethod
    def from_args(cls, spec: dict, exploration: dict, return_range: Sequence[float]) -> "QPolicyKind":
        return cls(spec, ExplorationSection.model_validate(exploration), tuple(return_range))

    # ---- models ---------------------------------------------------------------------------
    def load(self, weights: Mapping[str, Any], files: Mapping[str, bytes]) -> QPolicy:
        return QPolicy(PolicySpec.from_dict(self.spec), weights)

    def fault(self, model: QPolicy) -> str | None:
        return model.fault()

    def correct(self, model: QPolicy, examples: Sequence[tuple[Any, int]]) -> np.ndarray:
        raise GateError("a q_policy has no labeled examples")

    def answer(self, model: QPolicy, inputs: Sequence[Any]) -> np.ndarray:
        return model.q_values(np.asarray(inputs, dtype=np.float32)).argmax(1)

    # ---- evidence -------------------------------------------------------------------------
    def read(self, item: Mapping[str, Any]) -> Evidence | None:
        kind = item.get("type")
        if kind == "unservable":
            return unservable(item)
        if kind != "episode":
            return None
        ep = Episode.of(item)
        # a client episode the learner trained on scores its version but is no off-policy evidence
        logged = None if item.get("slice") == "trained" else ep
        return Evidence(version=ep.version, score=scaled(ep.ret, self.range), logged=logged, client=item.get("client"),
                        inputs=list(ep.obs))

    def ope_keeps(self, version: int | None, live: int | None) -> bool:
        return version is not None and version == live  # live's value is these episodes' mean

    def off_policy(self, candidate: QPolicy, live: Callable[[], Any], episodes: Sequence[Episode], cfg: OPESection,
                   seed: int) -> tuple[Estimate, Estimate, Estimate, str]:
        low, high = self.range
        logged = []
        for ep in episodes:
            dist = serving_distribution(candidate.q_values(ep.obs), self.exploration, log_probs=False)
            # rewards rescaled so that a return maps like `scaled` (the low end spread over the steps)
            step_rewards = (ep.rewards - low / len(ep.rewards)) / (high - low)
            logged.append((dist[np.arange(len(ep.actions)), ep.actions], ep.propensities, step_rewards))
        c = per_decision_is(logged, samples=cfg.bootstrap_samples, level=cfg.level, seed=seed)
        mean = float(np.mean([scaled(ep.ret, self.range) for ep in episodes]))
        n = len(episodes)
        l = Estimate(mean, mean, mean, "on-policy", n, 0, float(n), cfg.level)
        d = Estimate(c.value - mean, c.low - mean, c.high - mean, c.method, n, 0, c.ess, cfg.level)
        said = (f"off-policy ({c.method}, {n} episodes, ess {c.ess:.1f}): candidate {c.value:.3f} "
                f"[{c.low:.3f}, {c.high:.3f}], live {mean:.3f}")
        return c, l, d, said
