"""What a candidate says it learned from: counts and time range of the rows, summed over DDP ranks."""

from __future__ import annotations

from datetime import datetime, timezone
from typing import Any

import numpy as np
import torch

from learners.feedback_source import FeedbackBatch
from learners.objective import WorkerContext


class DataWindow:
    """Counts and time range of the rows learned from (lineage for a candidate's metadata)."""

    FIELDS = ("rows", "fresh", "labeled", "rewarded", "updates", "loss_sum")  # loss_sum last

    def __init__(self) -> None:
        self.rows = self.fresh = self.labeled = self.rewarded = self.updates = 0
        self.loss_sum = 0.0
        self.created_min = self.created_max = None  # µs since the epoch
        self.version_min = self.version_max = None

    def add(self, b: FeedbackBatch, fresh: int) -> None:
        self.rows += len(b)
        self.fresh += fresh
        self.labeled += int((b.label >= 0).sum())
        self.rewarded += int(((b.label < 0) & np.isfinite(b.reward)).sum())
        if len(b):
            self.created_min = _min(self.created_min, int(b.created_at.min()))
            self.created_max = _max(self.created_max, int(b.created_at.max()))
            self.version_min = _min(self.version_min, int(b.policy_version.min()))
            self.version_max = _max(self.version_max, int(b.policy_version.max()))

    def mean_loss(self) -> float | None:
        return self.loss_sum / self.updates if self.updates else None

    def reduced(self, ctx: WorkerContext) -> "DataWindow":
        """The window over every rank (counts summed, ranges widened); a collective under DDP."""
        if ctx.world_size == 1:
            return self
        import torch.distributed as dist

        big = float(2**62)
        sums = torch.tensor([float(getattr(self, f)) for f in self.FIELDS], dtype=torch.float64, device=ctx.device)
        # max of (-min, max) in one call; float64 holds µs timestamps exactly (< 2^53)
        ends = torch.tensor([-(self.created_min if self.created_min is not None else big),
                             self.created_max if self.created_max is not None else -big,
                             -(self.version_min if self.version_min is not None else big),
                             self.version_max if self.version_max is not None else -big],
                            dtype=torch.float64, device=ctx.device)
        dist.all_reduce(sums)
        dist.all_reduce(ends, op=dist.ReduceOp.MAX)
        out = DataWindow()
        for f, v in zip(self.FIELDS, sums.tolist()):
            setattr(out, f, int(v))
        out.updates = self.updates  # the same updates on every rank, not world_size times as many
        out.loss_sum = float(sums[-1]) / ctx.world_size  # mean of the ranks' losses
        e = ends.tolist()
        out.created_min = None if -e[0] >= big else int(-e[0])
        out.created_max = None if e[1] <= -big else int(e[1])
        out.version_min = None if -e[2] >= big else int(-e[2])
        out.version_max = None if e[3] <= -big else int(e[3])
        return out

    def to_json(self) -> dict[str, Any]:
        return {"rows": self.rows, "fresh_rows": self.fresh, "labeled_rows": self.labeled, "reward_rows": self.rewarded, "updates": self.updates,
                "created_at_min": _iso(self.created_min), "created_at_max": _iso(self.created_max),
                "policy_version_min": self.version_min, "policy_version_max": self.version_max}

    def state_dict(self) -> dict[str, Any]:
        return {k: v for k, v in vars(self).items()}

    @classmethod
    def from_state(cls, state: dict[str, Any]) -> "DataWindow":
        out = cls()
        out.__dict__.update(state)
        return out


def _min(a: int | None, b: int) -> int:
    return b if a is None else min(a, b)


def _max(a: int | None, b: int) -> int:
    return b if a is None else max(a, b)


def _iso(us: int | None) -> str | None:
    return None if us is None else datetime.fromtimestamp(us / 1e6, tz=timezone.utc).isoformat()
