"""One chaos experiment on a live feedback loop: traffic from a counting client, SIGKILL one of the
run's Ray processes once a first candidate is live, then check what a user of the run would check.

    start run -> endpoints answer -> counting client -> v2 live -> SIGKILL -> the process respawns
    -> a version newer than the one live at the respawn is served -> SIGTERM: the run stops (rc 0)
    -> every feedback event the app acknowledged is in `evolve replay export`, once

The figures (recovery time, failed requests, acknowledged feedback lost, ...) are printed and
appended to the results file (tests/chaos/.results.jsonl, see kill.report).
"""

from __future__ import annotations

import json
import signal
import time
from collections import Counter
from pathlib import Path
from typing import Callable

from tests.chaos.conftest import BUDGET_S, start_feedback_run
from tests.chaos.kill import CountingClient, exported_columns, ray_processes, report, sigkill
from tests.integration.helpers import wait_until


# Ray Train's worker group alone can take minutes to come up on a loaded 2-core machine: the run
# gets room for a first candidate before the kill and for another one after it.
KILL_BUDGET_S = 2 * BUDGET_S + 120
STARTUP_S = 600  # the endpoints line comes once the loop has started (routes live): minutes under load


def kill_under_traffic(tmp_path: Path, component: str, needles: tuple[str, ...], *sets: str,
                       budget_s: int = KILL_BUDGET_S,
                       back_at_work: Callable[[list[dict], float], bool] | None = None) -> dict:
    """`back_at_work(events, respawned_wall)`: what else must show in events.jsonl before the run is
    stopped (the respawned component doing its job), waited for within the budget."""
    run_dir = tmp_path / "run"
    proc, http = start_feedback_run(run_dir, *sets, budget_s=budget_s)
    client = CountingClient(http)
    started = time.monotonic()
    try:
        proc.wait_for_line("evolve: endpoints", timeout_s=STARTUP_S)
        ends_by = time.monotonic() + budget_s  # the budget counts from after this line: a bound, not a guess
        client.start()
        # the learner's first candidate live: the whole loop is turning when the kill comes
        wait_until(lambda: client.version_at(time.monotonic()) >= 2, budget_s // 2, "a first promoted version")
        killed_at = time.monotonic()
        before = {p for p, _ in ray_processes(proc.proc.pid, *needles)}
        pid, _ = sigkill(proc.proc.pid, *needles)
        respawned = wait_until(lambda: _respawned(proc.proc.pid, needles, before), 120,
                               f"a new process for {needles} after the kill")
        respawned_wall = time.time() - (time.monotonic() - respawned)
        # newer than what was live once the component was back: a candidate already on its way at the
        # kill does not count
        version = client.version_at(respawned)
        newer = wait_until(lambda: client.first_version_after(respawned, version), ends_by - time.monotonic(),
                           f"a version newer than v{version} served after the respawn")
        recovered = wait_until(lambda: client.recovery_after(killed_at), 120,
                               "an acknowledged feedback after the client's last failure")
        if back_at_work is not None:
            wait_until(lambda: back_at_work(read_events(run_dir), respawned_wall), ends_by - time.monotonic(),
                       f"the respawned {component} back at work (events.jsonl)")
    finally:
        client.stop()
        # the run stops as on Ctrl-C (every loop stopped, the joiner flushed, summary written),
        # not at the end of its budget: the budget only bounds a run that never recovers
        if proc.proc.poll() is None:
            proc.proc.send_signal(signal.SIGTERM)
        rc = proc.wait(timeout_s=240)
        elapsed = time.monotonic() - started
    assert rc == 0, proc.output[-3000:]
    acked = client.acked_ids()
    rows = exported_columns(run_dir, "sentiment", ["event_id", "created_at"], tmp_path)  # the loop's feedback table
    stored = rows["event_id"]
    # the loop's own traffic actor goes on (or, killed, its successor does): its rows predicted after the respawn
    traffic_after = sum(1 for e, at in zip(stored, rows["created_at"])
                        if e not in acked and at.timestamp() > respawned_wall)
    lost = acked - set(stored)
    twice = [e for e, n in Counter(stored).items() if n > 1]
    # every row the live store held at the end (the summary's table size, recovered rows included)
    held = json.loads((run_dir / "summary.json").read_text())["run"]["replay"]["sentiment"]["size"]
    failed = [(t, what) for t, what in client.failed if t > killed_at]
    figures = dict(
        recovery_s=round(recovered - killed_at, 2),
        respawn_s=round(respawned - killed_at, 2),
        new_version_after_s=round(newer - killed_at, 2), version_at_respawn=version,
        failed_requests=len(failed), failed_before_kill=len(client.failed) - len(failed),
        feedback_acked=len(acked), feedback_lost=len(lost), feedback_stored_twice=len(twice),
        rows_held=held, rows_exported=len(stored), traffic_rows_after_respawn=traffic_after,
        test_s=round(elapsed, 1),
    )
    report(component, **figures)
    for t, what in [f for f in client.failed if f[0] <= killed_at][:3] + failed[:5] + failed[-5:]:
        print(f"  failed at {t - killed_at:+.2f}s: {what}")
    assert not lost, f"{len(lost)} acknowledged feedback events missing from the replay export: {sorted(lost)[:5]}"
    assert len(set(stored)) >= held, f"the store held {held} feedback rows at the end, the export has {len(set(stored))}"
    assert not twice, f"{len(twice)} feedback events stored more than once: {twice[:5]}"
    return figures


def read_events(run_dir: Path) -> list[dict]:
    """events.jsonl so far (a line still being written is left for the next read)."""
    out = []
    for line in (run_dir / "events.jsonl").read_text().splitlines():
        try:
            out.append(json.loads(line))
        except json.JSONDecodeError:
            break
    return out


def _respawned(root_pid: int, needles: tuple[str, ...], before: set[int]) -> float | None:
    """Now, once a process matching `needles` runs that did not run before the kill."""
    fresh = [pid for pid, _ in ray_processes(root_pid, *needles) if pid not in before]
    return time.monotonic() if fresh else None
