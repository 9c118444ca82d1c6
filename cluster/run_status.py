"""What `evolve status` shows of a live run: one row per loop, folded from the run's own events.

    RunDir.event(record) --> RunStatus.observe(record)      (in the driver, as each event is written)
    every progress interval: RunStatus.snapshot() --> StatusBoard actor "evolve-run-status:<run>"
    `evolve status`: every StatusBoard in the namespace --> format_table()

The board is a plain named actor owned by the driver: it lives exactly as long
as the run, so a board that answers is a run that is going.
"""

from __future__ import annotations

import time
from collections import deque
from typing import Any

import ray

BOARD_PREFIX = "evolve-run-status:"
ALARM_OPEN_S = 120.0  # an alarm counts as open this long after it fired (detectors re-fire while drift lasts)
RATE_WINDOW_S = 30.0
ALARM_KINDS = ("adapt", "env_drift")
DECISION_KINDS = ("gate_decision", "rollback", "rl_gate", "canary_ended")


class RunStatus:
    """Folds event records into per-loop rows; plain, so the fold is tested without Ray."""

    def __init__(self, run: str, run_dir: str, clock=time.time):
        self.run, self.run_dir, self.clock = run, run_dir, clock
        self.started = clock()
        self.loops: dict[str, dict[str, Any]] = {}
        self.counts: dict[str, deque] = {}  # loop -> (time, feedback, env_steps) for rates
        self.alarms: dict[str, list[tuple[float, str]]] = {}
        self.replay: dict[str, int] = {}

    def observe(self, record: dict[str, Any]) -> None:
        loop, kind, t = record.get("loop"), record.get("event"), record.get("time", self.clock())
        if loop == "replay" and kind == "progress":
            self.replay = {name: info.get("size") for name, info in (record.get("tables") or {}).items()}
            return
        if loop in ("run", "replay", "publisher", None):
            return
        row = self.loops.setdefault(loop, {})
        if kind == "progress":
            row.update(version=record.get("version"), heldout_acc=record.get("heldout_acc"),
                       eval_return=record.get("eval_return"))
            points = self.counts.setdefault(loop, deque())
            points.append((t, record.get("feedback"), record.get("env_steps")))
            while len(points) > 2 and t - points[1][0] >= RATE_WINDOW_S:
                points.popleft()
            row["feedback_per_s"] = _rate(points, 1)
            row["env_steps_per_s"] = _rate(points, 2)
        elif kind in DECISION_KINDS:
            row["last_gate"] = _decision(record)
        elif kind in ALARM_KINDS and (kind == "env_drift" or not record.get("action")):
            self.alarms.setdefault(loop, []).append((t, str(record.get("signal") or kind)))

    def snapshot(self) -> dict[str, Any]:
        now = self.clock()
        rows = {}
        for loop, row in self.loops.items():
            open_alarms = [s for t, s in self.alarms.get(loop, []) if now - t <= ALARM_OPEN_S]
            rows[loop] = {**row, "open_alarms": sorted(set(open_alarms))}
        return {"run": self.run, "run_dir": self.run_dir, "elapsed_s": round(now - self.started, 1),
                "loops": rows, "replay": dict(self.replay), "updated_at": now}


@ray.remote(num_cpus=0, max_restarts=0)
class StatusBoard:
    """Holds the driver's newest snapshot for `evolve status`."""

    def __init__(self) -> None:
        self.snapshot: dict[str, Any] = {}

    def put(self, snapshot: dict[str, Any]) -> None:
        self.snapshot = snapshot

    def get(self) -> dict[str, Any]:
        return self.snapshot


def board_name(run: str) -> str:
    return BOARD_PREFIX + run


def format_table(snapshots: list[dict[str, Any]], now: float | None = None) -> list[str]:
    """One line per loop of every run: the columns `evolve status` prints."""
    now = now or time.time()
    header = f"  {'loop':<20} {'live':>5} {'acc/ret':>8} {'fb/s':>6} {'steps/s':>8}  {'last gate':<18} alarms"
    lines = []
    for snap in snapshots:
        lines.append(f"run {snap.get('run', '?')}: {snap.get('elapsed_s', 0):.0f}s, {snap.get('run_dir', '')}; replay "
                     + (", ".join(f"{k}={v}" for k, v in snap.get("replay", {}).items()) or "none")
                     + (f" (updated {now - snap['updated_at']:.0f}s ago)" if "updated_at" in snap else ""))
        lines.append(header if snap.get("loops") else "  (loops starting)")
        for loop, row in snap.get("loops", {}).items():
            figure = row.get("heldout_acc") if row.get("heldout_acc") is not None else row.get("eval_return")
            lines.append(f"  {loop:<20} {_cell(row.get('version')):>5} {_cell(figure):>8} "
                         f"{_cell(row.get('feedback_per_s')):>6} {_cell(row.get('env_steps_per_s')):>8}  "
                         f"{_cell(row.get('last_gate')):<18} {', '.join(row.get('open_alarms', [])) or '-'}")
    return lines


def _decision(record: dict[str, Any]) -> str:
    kind = record.get("event")
    if kind == "rollback":
        return f"rollback v{record.get('from')}->v{record.get('to')}"
    decision = record.get("decision") or kind
    return f"{decision} v{record.get('version')}" if record.get("version") is not None else str(decision)


def _rate(points: deque, index: int) -> float | None:
    first, last = points[0], points[-1]
    if first[index] is None or last[index] is None or last[0] <= first[0]:
        return None
    return round((last[index] - first[index]) / (last[0] - first[0]), 1)


def _cell(value: Any) -> str:
    if value is None:
        return "-"
    return f"{value:.3g}" if isinstance(value, float) else str(value)
