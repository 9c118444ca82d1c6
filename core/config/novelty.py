"""A `novelty` loop's section: the autoencoder that scores how new each request text is (core/models/novelty.py).

It learns from the request texts a feedback loop logs (that loop's `text`
table) on the pooled hidden state of the served classifier's first version,
and publishes each calibrated autoencoder as policy `<policy_id>-novelty`;
every replica of that feedback loop's app follows it and answers each
prediction with a `novelty` percentile.
"""

from __future__ import annotations

from typing import Any, Literal

from pydantic import Field

from core.config.base import LoopSection


class NoveltySection(LoopSection):
    kind: Literal["novelty"] = "novelty"  # scores how new each request of a feedback loop is
    watch: str  # the feedback loop whose requests it scores (listed before this loop)
    # The reference encoder's state the autoencoder reads: [CLS] or the mean over tokens (core/models/novelty.py).
    pooling: Literal["cls", "mean"] = "cls"
    hidden: int = Field(default=128, ge=2)  # the autoencoder's hidden width
    bottleneck: int = Field(default=16, ge=1)  # ... and its code's width
    lr: float = Field(default=1e-3, gt=0)  # Adam step size
    batch_size: int = Field(default=64, ge=2)  # request texts per learner step
    # One batch in `calibration_every` is held back from training: its errors are the calibration set
    # the percentiles are read against (the newest `calibration_size` features).
    calibration_every: int = Field(default=4, ge=2)
    calibration_size: int = Field(default=1000, ge=50)  # held-back features the percentiles are read against
    min_calibration: int = Field(default=200, ge=20)  # features held back before the first publish
    publish_every: int = Field(default=100, ge=1)  # learner steps between two published versions
    checkpoint_every: int = Field(default=1000, ge=1)  # learner steps between checkpoints
    # The learner shares the machine with the loop it watches: steps are paced, and its Ray Train
    # worker reserves this share of a CPU.
    max_steps_per_s: float = Field(default=2.0, gt=0)
    cpus_per_worker: float = Field(default=0.1, gt=0)  # Ray CPUs its Train worker reserves
    seed: int = 0  # the autoencoder's init and the batch draws

    def starts_after(self) -> list[str]:
        return [self.watch, *self.start_after]  # it reads that loop's first published version

    def published(self, loops: dict[str, LoopSection]) -> list[str]:
        watched = loops.get(self.watch)
        return [novelty_policy_id(watched.policy_id)] if getattr(watched, "policy_id", None) else []

    def check_in_run(self, name: str, cfg: Any) -> None:
        loops = cfg.loops
        names = list(loops)
        watched = loops.get(self.watch)
        if watched is None or watched.kind != "feedback":
            feedback = [n for n, loop in loops.items() if loop.kind == "feedback"]
            raise ValueError(f"loops.{name}.watch {self.watch!r} must name a feedback loop of this run "
                             f"({', '.join(feedback) or 'none'})")
        if names.index(self.watch) > names.index(name):
            raise ValueError(f"loops: {name!r} watches {self.watch!r}: list {self.watch!r} before it")
        if watched.tables.get("text") is None:
            raise ValueError(f"loops.{name} reads the request texts of {self.watch!r}, which logs none "
                             f"(loops.{self.watch}.tables.text is null)")


def novelty_policy_id(policy_id: str) -> str:
    """The policy the novelty loop watching classifier `policy_id` publishes."""
    return f"{policy_id}-novelty"
