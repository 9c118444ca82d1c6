"""The `novelty` section: the autoencoder loop that scores how new each request text is (core/models/novelty.py).

It learns from the request texts the feedback loop logs (its `text` table) on
the pooled hidden state of the served classifier's first version, and
publishes each calibrated autoencoder as policy `<policy_id>-novelty`; every
replica of the feedback app follows it and answers each prediction with a
`novelty` percentile.
"""

from __future__ import annotations

from typing import Literal

from pydantic import Field

from core.config.base import Section


class NoveltyConfig(Section):
    name: str = "novelty"
    policy_id: str = "sentiment"  # the served classifier whose requests it watches
    table: str = "text"  # the replay table of request texts
    # The reference encoder's state the autoencoder reads: [CLS] or the mean over tokens (core/models/novelty.py).
    pooling: Literal["cls", "mean"] = "cls"
    hidden: int = Field(default=128, ge=2)
    bottleneck: int = Field(default=16, ge=1)
    lr: float = Field(default=1e-3, gt=0)
    batch_size: int = Field(default=64, ge=2)
    # One batch in `calibration_every` is held back from training: its errors are the calibration set
    # the percentiles are read against (the newest `calibration_size` features).
    calibration_every: int = Field(default=4, ge=2)
    calibration_size: int = Field(default=1000, ge=50)
    min_calibration: int = Field(default=200, ge=20)  # features held back before the first publish
    publish_every: int = Field(default=100, ge=1)  # learner steps between two published versions
    checkpoint_every: int = Field(default=1000, ge=1)
    # The learner shares the machine with the loop it watches: steps are paced, and its Ray Train
    # worker reserves this share of a CPU.
    max_steps_per_s: float = Field(default=2.0, gt=0)
    cpus_per_worker: float = Field(default=0.1, gt=0)
    seed: int = 0

    @property
    def novelty_policy_id(self) -> str:
        return f"{self.policy_id}-novelty"
