"""What the stages on live traffic share: one experiment at a time, on a candidate the gate has stored.

judge() starts the experiment and answers `pending` (the reason says how much traffic it gets);
the gate then stores the candidate and points the registry stage of the stage's name at it,
which the replicas follow (serving/stage_follower.py).  poll() gives the verdict once, and the
experiment is over: only the caller that got it settles the candidate.
"""

from __future__ import annotations

import time
from dataclasses import dataclass, field
from typing import Any

from gate.stage import Candidate, Stage


@dataclass
class Experiment:
    candidate: Candidate
    state: Any = None  # the stage's own: a sequential test, the rows joined so far
    started: float = field(default_factory=time.time)

    @property
    def duration_s(self) -> float:
        return round(time.time() - self.started, 1)


class TrafficStage(Stage):
    doing = "runs on live traffic"  # said when another candidate must wait

    def __init__(self, policy: Any, settings: Any):
        super().__init__(policy, settings)
        self.run: Experiment | None = None

    def busy(self) -> str | None:
        run = self.run
        if run is None:
            return None
        return f"a {self.name} (v{run.candidate.version}) {self.doing}; one experiment at a time"

    def _begin(self, cand: Candidate, state: Any) -> None:
        with self.lock:
            self.run = Experiment(cand, state)

    def _over(self) -> Experiment | None:
        """The experiment, ended (None: none ran)."""
        with self.lock:
            run, self.run = self.run, None
        return run

    def _figures(self, run: Experiment) -> dict[str, Any]:
        return {"version": run.candidate.version, "live": run.candidate.live, "started": run.started}
