"""The adaptive controller: what the feedback loop changes when the world changes.

The signals (gate/adaptation.py): the live version's prequential
correctness, the novelty of the requests, the mix of predicted labels.  An
alarm on the live version's prequential correctness (the share of its
predictions that incoming feedback confirms) means the data moved: a new
domain, or users who now call other things "good".  A worse model would look
the same on that signal, so the controller does not judge (the rollback guard
does, by pairing live with the version before it on the same rows); it makes
the loop learn the new data sooner:

    learner_boost   for `boost_updates` updates: lr x `lr_factor` (bounded), rehearsal down to
                    `boost_rehearsal` (fresher batches), a candidate every `boost_candidate_every`,
                    and with `domain_mlm` > 0 a masked-LM loss on the new texts (continual MLM)

One adaptation per `cooldown_events` feedback events: alarms inside the
cooldown are recorded and answered with no action.

The gate's verdicts are a signal too.  During a drift (an alarm acted less than
`refusals.drift_events` feedback events ago) a streak of `refusals.streak`
candidates refused in a row says the candidates that learn the new data lose
what the gate's held-out set still asks of them:

    remember        the memory level one higher (at most `refusals.max_levels`): the learner's
                    rehearsal share and distillation weight each rise by a step
                    (core/config/memory.py `raised_memory`), for the rest of the run
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

from core.config.adapt import AdaptSection
from core.adapt.detectors import Alarm


@dataclass(frozen=True)
class Streak:
    """The gate's verdicts as an alarm: `at` candidates refused in a row."""

    at: int
    signal: str = "refusals"
    detector: str = "gate"

    def to_dict(self) -> dict[str, Any]:
        return {"signal": self.signal, "detector": self.detector, "at": self.at, "before": None, "after": None}


@dataclass
class Decision:
    alarm: Alarm | Streak
    actions: list[dict[str, Any]] = field(default_factory=list)
    suppressed: str | None = None  # why no action was taken

    def to_dict(self) -> dict[str, Any]:
        return {**self.alarm.to_dict(), "actions": self.actions, "suppressed": self.suppressed}


@dataclass
class Cooldown:
    """One adaptation per `length` on a loop's own clock (feedback events, env steps)."""

    length: int
    unit: str  # what the clock counts, for the suppressed alarm's reason
    last: int | None = None  # the clock when the controller last acted

    def busy(self, now: int) -> str | None:
        """Why an alarm at `now` gets no action, or None: the controller may act (and starts over)."""
        if self.last is not None and now - self.last < self.length:
            return f"cooldown: {self.length - (now - self.last)} more {self.unit}"
        self.last = now
        return None


class Controller:
    def __init__(self, cfg: AdaptSection):
        self.cfg = cfg
        self.cooldown = Cooldown(cfg.cooldown_events, "feedback events")
        self.decisions: list[Decision] = []
        self.refused_in_a_row = 0
        self.memory_level = 0  # refusal streaks answered so far
        self.acted_at: int | None = None  # the feedback events when an alarm last acted

    def on_alarm(self, alarm: Alarm, events: int) -> Decision:
        """`events`: feedback events seen by the loop so far (the cooldown's clock)."""
        cfg = self.cfg
        if alarm.signal not in cfg.act_on:
            decision = Decision(alarm, suppressed=f"{alarm.signal} is watched only (adapt.act_on)")
        elif (busy := self.cooldown.busy(events)) is not None:
            decision = Decision(alarm, suppressed=busy)
        else:
            decision = Decision(alarm, actions=[
                {"action": "learner_boost", "updates": cfg.boost_updates, "lr_factor": cfg.lr_factor,
                 "rehearsal": cfg.boost_rehearsal, "candidate_every": cfg.boost_candidate_every,
                 "domain_mlm": cfg.domain_mlm},
            ])
        if decision.actions:
            self.acted_at = events
        self.decisions.append(decision)
        return decision

    def on_verdict(self, decision: str, events: int) -> Decision | None:
        """A gate decision on a candidate; a Decision when a refusal streak during a drift raises the
        learner's memory.  Promotions end a streak; other outcomes (dropped, pending) leave it."""
        if decision in ("promote", "initial"):
            self.refused_in_a_row = 0
            return None
        if decision != "refuse":
            return None
        cfg = self.cfg.refusals
        if self.acted_at is None or events - self.acted_at >= cfg.drift_events:
            self.refused_in_a_row = 0  # outside a drift a refusal is the gate doing its work
            return None
        self.refused_in_a_row += 1
        if not cfg.streak or self.refused_in_a_row < cfg.streak:
            return None
        streak, self.refused_in_a_row = self.refused_in_a_row, 0
        if self.memory_level >= cfg.max_levels:
            decision_ = Decision(Streak(streak), suppressed=f"memory already raised {cfg.max_levels} times")
        else:
            self.memory_level += 1
            decision_ = Decision(Streak(streak), actions=[{"action": "remember", "level": self.memory_level}])
        self.decisions.append(decision_)
        return decision_


@dataclass
class Boost:
    """The learner's side of `learner_boost`: the settings in force for the next `updates` updates."""

    updates: int
    lr_factor: float
    rehearsal: float
    candidate_every: int
    domain_mlm: float = 0.0  # weight of the masked-LM loss on the rows' texts

    @classmethod
    def from_action(cls, action: dict[str, Any]) -> "Boost":
        return cls(int(action["updates"]), float(action["lr_factor"]), float(action["rehearsal"]),
                   int(action["candidate_every"]), float(action.get("domain_mlm", 0.0)))
