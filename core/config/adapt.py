"""The `adapt` section of a loop: which signal is watched, by which detector, and what an alarm changes."""

from __future__ import annotations

from typing import Literal

from pydantic import Field

from core.config.base import Section
from core.config.memory import RefusalSection


class DetectorSection(Section):
    """A river drift detector (river.drift.ADWIN or river.drift.PageHinkley)."""

    kind: Literal["adwin", "page_hinkley"] = "adwin"  # river.drift.ADWIN or river.drift.PageHinkley
    delta: float = Field(default=0.002, gt=0, lt=1)  # ADWIN: confidence; Page-Hinkley: tolerated change
    threshold: float = Field(default=50.0, gt=0)  # Page-Hinkley: cumulative deviation that raises the alarm
    min_instances: int = Field(default=30, ge=1)  # Page-Hinkley: values seen before it may alarm
    # Values averaged for the "after" figure of an alarm (and its direction for ADWIN).
    recent: int = Field(default=100, ge=5)


class AdaptSection(Section):
    """What the feedback loop does when the live version's accuracy on incoming feedback drifts down:
    boost the learner for a while, one adaptation per cooldown (see core/adapt/controller.py);
    and the gate's recent slice of feedback the learner never sees (gate/recent.py).

    enabled: false keeps the loop as it is without an adaptive layer.
    """

    enabled: bool = False  # the adaptive layer: detectors, learner boosts, the recent slice
    correctness: DetectorSection = Field(default_factory=DetectorSection)  # on live's prequential correctness
    # On each prediction's novelty percentile (with a `novelty` loop), alarming on a rise.
    novelty: DetectorSection = Field(default_factory=DetectorSection)
    # On the live version's share of predictions of the first label (restarted with each version:
    # a new version's own bias would read as a change).
    label_mix: DetectorSection = Field(default_factory=DetectorSection)
    # The signals whose alarms act; the others are logged only.  The label mix is watched, not acted
    # on: a shift in what users ask is no evidence the model needs to change.
    act_on: list[Literal["correctness", "novelty", "label_mix"]] = ["correctness", "novelty"]
    cooldown_events: int = Field(default=1000, ge=0)  # feedback events between two adaptations
    # The learner, for `boost_updates` updates after an alarm: a bounded lr boost, fresher batches,
    # candidates more often.
    boost_updates: int = Field(default=300, ge=1)
    lr_factor: float = Field(default=2.0, ge=1, le=10)  # the boost multiplies the learning rate by this
    boost_rehearsal: float = Field(default=0.2, ge=0, lt=1)  # rehearsal share during a boost (fresher batches)
    boost_candidate_every: int = Field(default=20, ge=1)  # learner updates between candidates during a boost
    # Continual MLM during a boost: each update adds this weight x a masked-LM loss on its rows'
    # texts, re-basing the encoder on the changed stream (learners/domain_mlm.py); 0 turns it off.
    domain_mlm: float = Field(default=0.0, ge=0, le=10)
    # The gate's recent slice: this share of labeled feedback (by a hash of the event id) is held out
    # of training; the newest `recent_size` rows judge candidates once there are `recent_min` of them
    # (gate/recent.py), and each group's feed the `groups` stage.
    recent_fraction: float = Field(default=0.1, gt=0, lt=1)
    recent_size: int = Field(default=400, ge=20)  # the recent slice's newest rows that judge
    recent_min: int = Field(default=150, ge=10)  # rows the recent slice needs before it judges
    # Candidates refused in a row during a drift: the controller raises the learner's rehearsal share
    # and distillation weight (core/config/memory.py).
    refusals: RefusalSection = Field(default_factory=RefusalSection)
