"""The text classifier's gate adapter: held-out texts, joined feedback, served labels.

    held-out example   (input, label id) of the fixed set `feedback.data` keeps off the traffic
    group              with `data.group_column`: each held-out row's group, and `group_of(input)`
                       for an input of the data (what the `groups` stage reads of live traffic)
    unit               a joined feedback: its score is 1 / 0 for a label on the served answer, else
                       the reward; its window value is what it says of the version's *greedy*
                       answer (the figure the held-out set measures), weighted 1 / propensity when
                       serving explored
    logged decision    (input, served label, its propensity, the reward, the label or -1): a label
                       names the reward of every answer, a reward only that of the served one
    shadow row         (served label, propensity, reward, label or -1, the shadow's answer, live's
                       class probabilities): its comparison is off-policy on the same rows
"""

from __future__ import annotations

from typing import Any, Callable, Mapping, Sequence

import numpy as np

from core.config.feedback import DataSection
from core.config.gate import OPESection, ShadowSection
from core.data.inputs import input_key, input_of_row
from core.models.classifier import from_version
from core.stats.ope import Estimate, Logged, compare
from gate.evidence import Evidence, unservable
from gate.offpolicy import describe
from gate.pointer import GateError


def correct(model: Any, examples: Sequence[tuple[Any, int]], batch: int = 128) -> np.ndarray:
    """[N] bool: did the model's argmax match each example's label."""
    inputs, labels = zip(*examples)
    return model.predict_proba(list(inputs), batch=batch).argmax(-1) == np.asarray(labels)


def greedy(probs: np.ndarray) -> np.ndarray:
    """[N, K] one-hot of each row's argmax: the policy that answers its most probable class."""
    out = np.zeros_like(probs, dtype=np.float64)
    out[np.arange(len(probs)), probs.argmax(1)] = 1.0
    return out


def greedy_verdict(row: Mapping[str, Any]) -> tuple[float, float] | None:
    """(value, weight) of one feedback for the serving version's greedy accuracy."""
    probs = row.get("probs")
    if not probs:
        return None
    best = max(range(len(probs)), key=probs.__getitem__)
    label, reward, mu = row.get("label"), row.get("reward"), row.get("propensity")
    if label is not None:
        return float(label == best), 1.0
    if mu is None or mu >= 1.0:
        return float(reward), 1.0
    return float(reward), (1.0 / mu if row["prediction"] == best else 0.0)


def _served(row: Mapping[str, Any]) -> tuple[int, float, float, int] | None:
    """(served label, its propensity, its reward, label or -1), or None when the row says nothing
    off-policy (no propensity: logged before there were any; neither label nor reward)."""
    label = -1 if row.get("label") is None else int(row["label"])
    action = int(row["prediction"])
    reward = float(action == label) if label >= 0 else row.get("reward")
    mu = row.get("propensity")
    if reward is None or mu is None or not 0 < float(mu) <= 1:
        return None
    return action, float(mu), float(reward), label


class TextKind:
    name = "text_classifier"
    unit = "feedback"
    logged_units = "held-back feedback rows"
    gives = frozenset({"heldout", "score", "window", "logged", "shadow", "examples", "answered", "inputs",
                       "labeled", "groups"})

    def __init__(self, heldout: Sequence[tuple[Any, int]], groups: Sequence[str] | None = None,
                 score_batch: int = 128, row_groups: Sequence[tuple[Any, str]] = ()):
        """`row_groups`: (input, group) of the rows traffic draws from; the held-out rows' count too."""
        if not heldout:
            raise GateError("the gate needs a non-empty held-out set")
        self.heldout = list(heldout)
        self.groups = np.asarray(groups) if groups is not None else None
        if self.groups is not None and len(self.groups) != len(self.heldout):
            raise GateError("groups must name one group per held-out row")
        self.score_batch = score_batch
        self.spec = {"kind": self.name}
        self._group_of = {input_key(x): str(g) for x, g in row_groups}
        if self.groups is not None:
            self._group_of.update({input_key(x): str(g) for (x, _), g in zip(self.heldout, self.groups)})

    @classmethod
    def from_args(cls, data: dict | DataSection, score_batch: int = 128) -> "TextKind":
        """From `feedback.data` (the rows are read here, again after a gate actor's restart)."""
        loaded = DataSection.model_validate(data).load()
        traffic = zip((x for x, _ in loaded.train), loaded.groups) if loaded.groups is not None else ()
        return cls(loaded.heldout, loaded.heldout_groups, score_batch, list(traffic))

    def group_of(self, item: Any) -> str | None:
        """The group of an input of the data (None: not one of its rows, or no groups)."""
        return self._group_of.get(input_key(item)) if self._group_of else None

    # ---- models ---------------------------------------------------------------------------
    def load(self, weights: Mapping[str, Any], files: Mapping[str, bytes]) -> Any:
        return from_version(weights, files)

    def fault(self, model: Any) -> str | None:
        return None  # a classifier that loads answers (its probabilities are a softmax)

    def correct(self, model: Any, examples: Sequence[tuple[Any, int]]) -> np.ndarray:
        return correct(model, examples, self.score_batch)

    def answer(self, model: Any, inputs: Sequence[Any]) -> np.ndarray:
        return model.predict_proba(list(inputs), batch=self.score_batch).argmax(-1)

    # ---- evidence -------------------------------------------------------------------------
    def read(self, item: Mapping[str, Any]) -> Evidence | None:
        kind = item.get("type")
        if kind == "unservable":
            return unservable(item)
        if kind == "answered":
            return Evidence(version=int(item["version"]), answered=(item.get("novelty"), int(item["prediction"])))
        if kind != "feedback":
            return None
        row = item["row"]
        label, reward = row.get("label"), row.get("reward")
        version = row.get("policy_version")
        ev = Evidence(version=None if version is None else int(version), client=item.get("client"),
                      score=float(label == row["prediction"]) if label is not None else
                      (None if reward is None else float(reward)),
                      window=greedy_verdict(row), inputs=[input_of_row(row)] if "text" in row else None)
        if label is not None and "text" in row:
            ev.labeled = (input_of_row(row), int(label))
        if item.get("slice") == "recent" and label is not None:
            ev.example = (input_of_row(row), int(label))
        elif item.get("slice") == "ope":
            served = _served(row)
            ev.logged = None if served is None else (input_of_row(row), *served)
        if row.get("shadow_prediction") is not None and row.get("probs"):
            served = _served(row)
            if served is not None:
                ev.shadow = (int(row["shadow_version"]), (*served, int(row["shadow_prediction"]),
                                                          [float(p) for p in row["probs"]]))
        return ev

    def ope_keeps(self, version: int | None, live: int | None) -> bool:
        return True  # rows carry their propensity: any served version's are evidence

    def off_policy(self, candidate: Any, live: Callable[[], Any], rows: Sequence[tuple], cfg: OPESection,
                   seed: int) -> tuple[Estimate, Estimate, Estimate, str]:
        """Each model's greedy answers on the logged inputs against the logged rewards (live's class
        probabilities are the doubly robust estimate's reward model)."""
        inputs, actions, mu, rewards, labels = zip(*rows)
        live_probs = live().predict_proba(list(inputs))
        cand_probs = candidate.predict_proba(list(inputs))
        c, l, d = compare(greedy(cand_probs), greedy(live_probs), Logged.of(actions, mu, rewards, labels), cfg.method,
                          reward_model=live_probs, samples=cfg.bootstrap_samples, level=cfg.level, seed=seed)
        return c, l, d, describe("off-policy", c, l, d)

    def shadow(self, rows: Sequence[tuple], cfg: ShadowSection, seed: int) -> tuple[Estimate, Estimate, Estimate, str]:
        """The shadow's answers (one-hot) against live's greedy ones on the rows both answered."""
        actions, mu, rewards, labels, answers, probs = zip(*rows)
        probs = np.asarray(probs, dtype=np.float64)
        answered = np.zeros_like(probs)
        answered[np.arange(len(rows)), answers] = 1.0
        c, l, d = compare(answered, greedy(probs), Logged.of(actions, mu, rewards, labels), cfg.method,
                          reward_model=probs, samples=cfg.bootstrap_samples, level=cfg.level, seed=seed)
        return c, l, d, describe("shadow", c, l, d)
