"""What the online learner remembers of older feedback, and how the controller raises it.

    loops.<name>.learning.memory   the rehearsal buffer (uniform, or balanced over groups and time)
                                   and the distillation term to the live version on rehearsal rows
    loops.<name>.adapt.refusals    candidates refused in a row during a drift: the controller raises
                                   the rehearsal share and the distillation weight, a level at a time
"""

from __future__ import annotations

from typing import Literal

from pydantic import Field

from core.config.base import Section


class MemorySection(Section):
    """The online learner's rehearsal buffer and its distillation term (learners/rehearsal.py,
    learners/distill.py); the share of each batch rehearsed is `learning.rehearsal`."""

    # uniform: a reservoir sample of every row seen, so a long group crowds out a short one;
    # balanced: strata by (group, era), each group an equal share of the buffer and of each
    # rehearsal draw, and within a group each era of `era_rows` rows an equal share.  A row's group
    # is its group in the loop's labeled data (data.group_column), looked up by its text; a text
    # the data does not hold is balanced over time only.
    buffer: Literal["uniform", "balanced"] = "uniform"
    era_rows: int = Field(default=1000, ge=1)  # stream rows per era: the buffer's time strata
    # Learning without forgetting (Li and Hoiem): each update adds this weight times the squared
    # temperature times KL(live || candidate) of the predictive distributions at that temperature
    # on its rehearsal rows.
    # "live" is the newest of this learner's candidates the gate made live (or the version it
    # started from).  Only the deep classifier is distilled: a model with a wide part ignores it.
    distill: float = Field(default=0.0, ge=0, le=20)
    distill_temperature: float = Field(default=2.0, gt=0, le=10)  # T: softens both distributions


class RefusalSection(Section):
    """The controller's answer to a refusal streak during a drift (core/adapt/controller.py): the
    gate's held-out set weighs the groups already learned, and candidates that learned the new
    group lost on them; more rehearsal and a stronger pull to live trade speed for memory."""

    # Candidates refused in a row, while a drift alarm acted less than `drift_events` feedback
    # events ago, that raise the learner's memory one level; 0 turns the escalation off.
    streak: int = Field(default=3, ge=0)
    drift_events: int = Field(default=3000, ge=1)  # how long after an acted alarm "during a drift" lasts
    max_levels: int = Field(default=3, ge=1)  # escalations in one run at most
    rehearsal_step: float = Field(default=0.1, ge=0, lt=1)  # added to learning.rehearsal per level
    max_rehearsal: float = Field(default=0.8, gt=0, lt=1)  # the raised share stays at or below this
    distill_step: float = Field(default=0.5, ge=0, le=20)  # added to learning.memory.distill per level
    max_distill: float = Field(default=3.0, ge=0, le=20)  # the raised weight stays at or below this


def raised_memory(rehearsal: float, distill: float, refusals: RefusalSection, level: int) -> tuple[float, float]:
    """(rehearsal share, distillation weight) after `level` escalations; a section's own values that
    already exceed a cap are kept."""
    if level <= 0:
        return rehearsal, distill
    share = max(rehearsal, min(refusals.max_rehearsal, rehearsal + level * refusals.rehearsal_step))
    weight = max(distill, min(refusals.max_distill, distill + level * refusals.distill_step))
    return share, weight
