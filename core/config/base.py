"""The base every config section shares (kept apart so section modules can import it)."""

from __future__ import annotations

import re
from typing import Any

from pydantic import BaseModel, ConfigDict

# \Z, not $: `$` also matches before a trailing newline, which would let "name\n" through
NAME_PATTERN = re.compile(r"\A[A-Za-z0-9][A-Za-z0-9_.-]{0,63}\Z")


class Section(BaseModel):
    """Base of every config section: unknown keys are errors, values are checked on assignment."""

    model_config = ConfigDict(extra="forbid", validate_assignment=True)


class LoopSection(Section):
    """Base of one loop's section under `loops.<name>`: its `kind` (a Literal in each subclass)
    picks the section class, and the run fills in what the loop leaves to its name: its policy id
    and the names of the replay tables its kind declares (core/config/evolve.py)."""

    # Loops of this run, listed before this one, that start first: on a small machine a loop that
    # keeps the CPUs busy from its first second (RL rollouts and updates) lets a heavy start (a
    # classifier's Serve app, gate and learner workers) finish sooner.
    start_after: list[str] = []

    def published(self, loops: dict[str, "LoopSection"]) -> list[str]:
        """The policy ids this loop publishes to the registry (two loops may not share one)."""
        return []

    def routes(self) -> list[str]:
        """The HTTP route prefixes this loop's Serve app answers under (two loops may not share one)."""
        return []

    def starts_after(self) -> list[str]:
        """The loops of the run this one starts after (it needs what their start makes, or asks to)."""
        return list(self.start_after)

    def check_in_run(self, name: str, cfg: Any) -> None:
        """Checks against the rest of the run (`cfg`: the EvolveConfig, its loops in order, their
        tables resolved); raise ValueError to refuse."""


class ServedPolicy:
    """What a loop section that serves one policy of its own shares: its `policy_id` is what it
    publishes, and its `tables` name its replay tables by role (filled in by the run); the
    section declares both fields."""

    def table(self, role: str) -> str | None:
        """The replay table of `role`; a section outside a run: the role's name."""
        return self.tables[role] if role in self.tables else role

    def published(self, loops: dict[str, LoopSection]) -> list[str]:
        return [self.policy_id] if self.policy_id else []
