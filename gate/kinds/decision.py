"""The decision policy's gate adapter: rewarded decisions, judged off-policy; no held-out set.

    unit               a joined decision: its reward on the gate's [0, 1] scale (the policy's declared
                       [reward_min, reward_max], clipped); a default reward counts as the client's
    logged decision    a joined decision the joiner held back (`slice: ope`): the request (context and
                       actions as sent), the action served, the probability it was served with, the
                       reward; rows of any version count, since each carries its own propensity
    off-policy         each policy's serving distribution over the logged request's actions (its
                       exploration included, as it would be served), doubly robust with live's
                       predicted rewards (clipped to the scale) as the reward model; requests with
                       different numbers of actions share one [N, K] by zero columns, which add
                       nothing to either term
    fault              a weight that is not a finite number
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from typing import Any, Callable, Mapping, Sequence

import numpy as np

from core.config.gate import OPESection
from core.decisions.explore import distribution
from core.decisions.files import policy_from_files
from core.decisions.policy import DecisionPolicy, Request
from core.stats.ope import Estimate, Logged, compare
from gate.evidence import Evidence, unservable
from gate.pointer import GateError


@dataclass(frozen=True)
class LoggedDecision:
    context: dict[str, Any]
    actions: list[dict[str, Any]]
    chosen: int
    propensity: float
    reward: float  # on the gate's scale


class DecisionKind:
    name = "decision_policy"
    unit = "decision"
    logged_units = "held-back rewarded decisions"
    gives = frozenset({"score", "logged", "inputs"})
    heldout = None
    groups = None

    def __init__(self, reward_range: tuple[float, float]):
        low, high = float(reward_range[0]), float(reward_range[1])
        if not low < high:
            raise GateError(f"a decision policy's reward range must be increasing, not {reward_range}")
        self.range = (low, high)
        self.spec = {"kind": self.name}  # what the publisher is told about a version

    @classmethod
    def from_args(cls, reward_range: Sequence[float]) -> "DecisionKind":
        return cls(tuple(reward_range))

    def scaled(self, reward: float) -> float:
        low, high = self.range
        return min(max((float(reward) - low) / (high - low), 0.0), 1.0)

    # ---- models ---------------------------------------------------------------------------
    def load(self, weights: Mapping[str, Any], files: Mapping[str, bytes]) -> DecisionPolicy:
        return policy_from_files({k: np.asarray(v) for k, v in weights.items()}, files)

    def fault(self, model: DecisionPolicy) -> str | None:
        bad = int((~np.isfinite(model.scorer.weights)).sum())
        return f"{bad} weights are not finite numbers" if bad else None

    def correct(self, model: DecisionPolicy, examples: Sequence[tuple[Any, int]]) -> np.ndarray:
        raise GateError("a decision policy has no labeled examples")

    def answer(self, model: DecisionPolicy, inputs: Sequence[Any]) -> np.ndarray:
        """The action each policy ranks first on each logged (context, actions)."""
        return np.array([int(np.argmax(model.scorer.predict(model.request(c, a).encoded))) for c, a in inputs])

    # ---- evidence -------------------------------------------------------------------------
    def read(self, item: Mapping[str, Any]) -> Evidence | None:
        kind = item.get("type")
        if kind == "unservable":
            return unservable(item)
        if kind != "feedback":
            return None
        row = item["row"]
        context, actions = json.loads(row["context"]), json.loads(row["actions"])
        score = self.scaled(row["reward"])
        logged = (LoggedDecision(context, actions, int(row["chosen"]), float(row["propensity"]), score)
                  if item.get("slice") == "ope" else None)
        return Evidence(version=int(row["policy_version"]), score=score, logged=logged, client=item.get("client"),
                        inputs=[(context, actions)])

    def ope_keeps(self, version: int | None, live: int | None) -> bool:
        return True  # each row carries the probability its own version served it with

    def off_policy(self, candidate: DecisionPolicy, live: Callable[[], Any], rows: Sequence[LoggedDecision],
                   cfg: OPESection, seed: int) -> tuple[Estimate, Estimate, Estimate, str]:
        current = live()
        width = max(len(r.actions) for r in rows)
        target_c, target_l, q = (np.zeros((len(rows), width)) for _ in range(3))
        for i, r in enumerate(rows):
            k = len(r.actions)
            target_c[i, :k] = _served(candidate, candidate.request(r.context, r.actions))
            request = current.request(r.context, r.actions)
            target_l[i, :k] = _served(current, request)
            q[i, :k] = [self.scaled(v) for v in current.scorer.predict(request.encoded)]
        logged = Logged.of([r.chosen for r in rows], [r.propensity for r in rows], [r.reward for r in rows])
        c, l, d = compare(target_c, target_l, logged, cfg.method, reward_model=q, samples=cfg.bootstrap_samples,
                          level=cfg.level, seed=seed)
        said = (f"off-policy ({c.method}, {len(rows)} decisions, ess {c.ess:.1f}): candidate {c.value:.3f} "
                f"[{c.low:.3f}, {c.high:.3f}], live {l.value:.3f}")
        return c, l, d, said


def _served(policy: DecisionPolicy, request: Request) -> np.ndarray:
    """The distribution the policy would serve the request with."""
    return distribution(policy.scorer.predict(request.encoded), policy.explore, policy.scorer.updates)
