"""What `evolve status` shows of a live run: one row per loop, folded from the run's own events.

    RunDir.event(record) --> RunStatus.observe(record)      (in the driver, as each event is written)
    every progress interval: RunStatus.snapshot() --> StatusBoard actor "evolve-run-status:<run>"
    `evolve status`: every StatusBoard in the namespace --> format_table()
    the board also sets the METRICS gauges (ray.util.metrics) --> Ray's Prometheus export
                                                                  (as ray_<name>) --> dashboards/evolve.json

What a loop's row holds is what its kind declares (core/config/kinds.py
`Figures.status` and `.rates`): the figure of its progress event behind each
row key, and the counters shown per second.  The board is a plain named actor
owned by the driver: it lives exactly as long as the run, so a board that
answers is a run that is going.
"""

from __future__ import annotations

import time
from collections import deque
from typing import Any

import ray

from core.config.kinds import figures_of

BOARD_PREFIX = "evolve-run-status:"
ALARM_OPEN_S = 120.0  # an alarm counts as open this long after it fired (detectors re-fire while drift lasts)
RATE_WINDOW_S = 30.0
ALARM_KINDS = ("adapt", "env_drift", "world_changed")
DECISION_KINDS = ("gate_decision", "rollback", "rl_gate", "canary_ended")

# Every loop figure the board exports: name -> (row key, description with its unit).  Ray's
# export prefixes each name with `ray_`; docs/observability.md's table and dashboards/evolve.json list them.
METRICS = {
    "evolve_loop_live_version": ("version", "live policy version of the loop (version number)"),
    "evolve_loop_heldout_accuracy": ("heldout_acc", "held-out accuracy of the live version (fraction 0..1)"),
    "evolve_loop_eval_return": ("eval_return", "newest greedy evaluation return (mean episode return)"),
    "evolve_loop_feedback_rate": ("feedback_per_s", "feedback events joined per second, last 30 s (events/s)"),
    "evolve_loop_env_step_rate": ("env_steps_per_s", "env steps per second, last 30 s (steps/s)"),
    "evolve_loop_learner_updates": ("updates", "learner updates so far (updates)"),
    "evolve_loop_learner_loss": ("loss", "learner loss, newest window (objective units)"),
    "evolve_loop_open_alarms": ("open_alarms", "drift signals that alarmed in the last 2 minutes (alarms)"),
}
REPLAY_METRIC = ("evolve_run_replay_rows", "rows in a replay table (rows)")


class RunStatus:
    """Folds event records into per-loop rows; plain, so the fold is tested without Ray."""

    def __init__(self, run: str, run_dir: str, clock=time.time, kinds: dict[str, str] | None = None):
        """`kinds`: each loop's kind, whose declared figures fill its row (a loop not named: every kind's)."""
        self.run, self.run_dir, self.clock = run, run_dir, clock
        self.kinds = dict(kinds or {})
        self.started = clock()
        self.loops: dict[str, dict[str, Any]] = {}
        self.counts: dict[str, deque] = {}  # loop -> (time, {row key: counter}) for rates
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
            figures = figures_of(self.kinds.get(loop))
            row.update({key: record.get(figure) for key, figure in figures.status.items()})
            points = self.counts.setdefault(loop, deque())
            points.append((t, {key: record.get(counter) for key, counter in figures.rates.items()}))
            while len(points) > 2 and t - points[1][0] >= RATE_WINDOW_S:
                points.popleft()
            row.update({key: _rate(points, key) for key in figures.rates})
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
        from ray.util import metrics

        self.snapshot: dict[str, Any] = {}
        self.gauges = {name: metrics.Gauge(name, description, tag_keys=("run", "loop"))
                       for name, (_, description) in METRICS.items()}
        self.replay_rows = metrics.Gauge(REPLAY_METRIC[0], REPLAY_METRIC[1], tag_keys=("run", "table"))

    def put(self, snapshot: dict[str, Any]) -> None:
        self.snapshot = snapshot
        for name, value, tags in metric_values(snapshot):
            gauge = self.replay_rows if name == REPLAY_METRIC[0] else self.gauges[name]
            gauge.set(value, tags=tags)

    def get(self) -> dict[str, Any]:
        return self.snapshot


def metric_values(snapshot: dict[str, Any]) -> list[tuple[str, float, dict[str, str]]]:
    """(metric, value, tags) for each figure a snapshot has; a figure not known yet is not exported."""
    run = str(snapshot.get("run", "?"))
    out = []
    for loop, row in snapshot.get("loops", {}).items():
        for name, (key, _) in METRICS.items():
            value = len(row.get(key) or []) if key == "open_alarms" else row.get(key)
            if isinstance(value, (int, float)) and not isinstance(value, bool):
                out.append((name, float(value), {"run": run, "loop": loop}))
    for table, size in snapshot.get("replay", {}).items():
        if isinstance(size, (int, float)):
            out.append((REPLAY_METRIC[0], float(size), {"run": run, "table": table}))
    return out


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


def _rate(points: deque, key: str) -> float | None:
    (t0, first), (t1, last) = points[0], points[-1]
    if first.get(key) is None or last.get(key) is None or t1 <= t0:
        return None
    return round((last[key] - first[key]) / (t1 - t0), 1)


def _cell(value: Any) -> str:
    if value is None:
        return "-"
    return f"{value:.3g}" if isinstance(value, float) else str(value)
