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
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

from core.config.adapt import AdaptSection
from core.adapt.detectors import Alarm


@dataclass
class Decision:
    alarm: Alarm
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
        self.decisions.append(decision)
        return decision


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
