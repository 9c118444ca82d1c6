"""Drift detectors over one stream of numbers, from the `river` library.

`Detector.update(x)` returns an `Alarm` when river's detector says the
stream changed in the watched direction: ADWIN (Bifet & Gavaldà 2007) keeps
an adaptive window and cuts it where two sub-windows' means differ beyond a
Hoeffding bound; Page-Hinkley (Page 1954) accumulates deviations from the
running mean and alarms past a threshold.  ADWIN sees changes both ways, so
its alarm counts only when the mean after the cut moved in `direction`
(for accuracy, down: a rise in accuracy is no reason to adapt).
"""

from __future__ import annotations

from collections import deque
from dataclasses import asdict, dataclass
from typing import Any, Literal

from core.config.adapt import DetectorSection

Direction = Literal["down", "up", "both"]


@dataclass(frozen=True)
class Alarm:
    signal: str
    detector: str
    at: int  # values seen by the detector when it fired
    before: float  # the stream's mean since the previous alarm (or the start)
    after: float  # the mean of the most recent values

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)


class Detector:
    def __init__(self, signal: str, cfg: DetectorSection, direction: Direction = "down"):
        from river import drift

        self.signal, self.cfg, self.direction = signal, cfg, direction
        if cfg.kind == "adwin":
            self._river = drift.ADWIN(delta=cfg.delta)
        else:
            self._river = drift.PageHinkley(min_instances=cfg.min_instances, delta=cfg.delta,
                                            threshold=cfg.threshold, mode=direction)
        self.seen = 0
        self._sum, self._n = 0.0, 0  # since the last alarm
        self._recent: deque[float] = deque(maxlen=cfg.recent)
        self.alarms: list[Alarm] = []

    def update(self, x: float) -> Alarm | None:
        x = float(x)
        self.seen += 1
        self._recent.append(x)
        before = self._sum / self._n if self._n else x
        self._sum, self._n = self._sum + x, self._n + 1
        self._river.update(x)
        if not self._river.drift_detected:
            return None
        after = sum(self._recent) / len(self._recent)
        if self.cfg.kind == "adwin":
            after = float(self._river.estimation)  # the mean of the window ADWIN kept
        moved = after - before
        if (self.direction == "down" and moved >= 0) or (self.direction == "up" and moved <= 0):
            return None
        alarm = Alarm(self.signal, self.cfg.kind, self.seen, round(before, 4), round(after, 4))
        self.alarms.append(alarm)
        self._sum, self._n = sum(self._recent), len(self._recent)  # the new regime's mean starts here
        return alarm
