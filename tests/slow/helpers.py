"""One real `evolve` run per slow test, to its end, and what it wrote.

Like the integration tests, every run is the CLI in a subprocess (tests/integration/helpers.py
`CliProcess`) with its own run directory and free ports for the gateway (HTTP, gRPC) and the
dashboard, so slow tests can share a machine with other Ray clusters.  RAY_AUTH_MODE comes from
tests/conftest.py (token unless the shell says otherwise) through the inherited environment.
"""

from __future__ import annotations

import json
import signal
import subprocess
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from tests.conftest import free_port
from tests.integration.helpers import CliProcess

# After the budget: each loop stops its learner (a final checkpoint), actors and apps, and the
# summary is written; on 2 busy cores that has taken up to a minute or two.  Start-up counts
# inside the budget (the run's clock starts before Ray does).
SHUTDOWN_SLACK_S = 300


def timeout_for(budget_s: float, extra_s: float = 0) -> int:
    """A per-test limit above the run's own (pyproject's default of 600 s is shorter than a run)."""
    return int(budget_s + SHUTDOWN_SLACK_S + 180 + extra_s)


@dataclass
class FinishedRun:
    run_dir: Path
    summary: dict[str, Any]
    output: str

    def loop(self, name: str) -> dict[str, Any]:
        loops = self.summary["loops"]
        assert name in loops, f"summary.json has no loop {name!r} (loops: {sorted(loops)}){self.tail()}"
        return loops[name]

    def events(self, loop: str | None = None, event: str | None = None) -> list[dict[str, Any]]:
        out = []
        for line in (self.run_dir / "events.jsonl").read_text(encoding="utf-8").splitlines():
            try:
                e = json.loads(line)
            except json.JSONDecodeError:  # a torn last line
                continue
            if (loop is None or e.get("loop") == loop) and (event is None or e.get("event") == event):
                out.append(e)
        return out

    def tail(self, chars: int = 4000) -> str:
        return f"\n--- evolve output (tail) ---\n{self.output[-chars:]}"


def evolve_run(config: str, run_dir: Path, budget_s: float, *overrides: str, command: str = "run") -> FinishedRun:
    """`evolve COMMAND CONFIG --budget-s B --run-dir DIR --set ...` until it exits by itself; the
    run must exit 0 and write summary.json.  `overrides` are KEY=VALUE strings for --set."""
    args = [
        command, config, "--budget-s", str(budget_s), "--run-dir", str(run_dir),
        "--set", f"serving.http_port={free_port()}", "--set", f"serving.grpc_port={free_port()}",
        "--set", f"cluster.dashboard_port={free_port()}",
    ]
    for override in overrides:
        args += ["--set", override]
    proc = CliProcess(*args)
    try:
        rc = _wait(proc, budget_s + SHUTDOWN_SLACK_S)
    finally:
        proc.kill()
    tail = f"\n--- evolve output (tail) ---\n{proc.output[-4000:]}"
    assert rc == 0, f"`evolve {' '.join(args)}` exited {rc}{tail}"
    summary_path = run_dir / "summary.json"
    assert summary_path.is_file(), f"no summary.json in {run_dir}{tail}"
    return FinishedRun(run_dir, json.loads(summary_path.read_text(encoding="utf-8")), proc.output)


def _wait(proc: CliProcess, timeout_s: float) -> int:
    """Exit code; past `timeout_s` the run is asked to stop as Ctrl-C would (SIGTERM: loops stopped,
    summary written, the embedded cluster shut down), then killed, and the test fails."""
    try:
        rc = proc.proc.wait(timeout=timeout_s)
    except subprocess.TimeoutExpired:
        proc.proc.send_signal(signal.SIGTERM)
        try:
            proc.proc.wait(timeout=120)
        except subprocess.TimeoutExpired:
            pass
        proc.kill()
        raise AssertionError(f"evolve did not exit within {timeout_s:.0f}s:\n{proc.output[-4000:]}") from None
    proc._reader.join(timeout=10)  # the last lines
    return rc


def figure(name: str, **values: Any) -> str:
    """Print a test's measured figures on one line (shown by `pytest -s` / `-rA`); returns the line
    for the assertion message."""
    line = f"[slow] {name}: " + ", ".join(f"{k}={_fmt(v)}" for k, v in values.items())
    print(line)
    return line


def _fmt(value: Any) -> str:
    return f"{value:.4f}" if isinstance(value, float) else str(value)
