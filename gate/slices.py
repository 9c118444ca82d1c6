"""Which joined feedback the gate keeps out of training: the rule the joiner applies before it writes a row.

    recent  a share of labeled feedback: the recent slice, a second test set (`adapt.recent_fraction`)
    ope     a share of all feedback: the off-policy stage's logged decisions (`gate.ope.fraction`)

The share is chosen by a salted hash of the event id.  The salt is drawn when the rule is made
and never leaves the run, so a client cannot tell which of its feedback is held out.  A `Slices`
is a small picklable value: cluster/ hands it to the joiner, which calls it without knowing the
gate (serving never imports this package).
"""

from __future__ import annotations

import secrets
from dataclasses import dataclass, field

from core.config.adapt import AdaptSection
from core.config.gate import GateSection
from core.data.hashing import stable_unit_hash


@dataclass(frozen=True)
class Slices:
    recent: float = 0.0
    ope: float = 0.0
    salt: str = field(default_factory=lambda: secrets.token_hex(16))

    def __call__(self, event_id: str, labeled: bool) -> str | None:
        """The slice a joined feedback is held out for, or None: it goes to the replay store."""
        if labeled and stable_unit_hash(f"{self.salt}{event_id}#recent") < self.recent:
            return "recent"
        if stable_unit_hash(f"{self.salt}{event_id}#ope") < self.ope:
            return "ope"
        return None

    @classmethod
    def of(cls, gate: GateSection, adapt: AdaptSection | None = None) -> "Slices | None":
        """The rule a gate with these sections needs; None when it holds nothing out."""
        recent = adapt.recent_fraction if adapt is not None and adapt.enabled else 0.0
        ope = gate.ope.fraction if "ope" in gate.stages else 0.0
        return cls(recent, ope) if recent or ope else None
