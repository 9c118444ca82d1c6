"""SIGKILL the rollout actor of a live RL loop (CartPole, DQN) under a client of `/act`.

The actor must come back by itself (`max_restarts=-1`) and keep feeding the learner: a version
newer than the one live when it is back is served.  Every row the replay
shards acknowledged (the run summary's inserts) must be in `evolve replay export`, each once.
"""

from __future__ import annotations

import json
import signal
import time
from collections import Counter

import httpx
import pytest

from tests.chaos.kill import LoopingClient, exported_column, ray_processes, report, sigkill
from tests.conftest import free_port
from tests.integration.helpers import CliProcess, wait_until

# a live run starts in minutes on a loaded 2-core machine, past the default 600 s per test
pytestmark = [pytest.mark.chaos, pytest.mark.timeout(1500)]

BUDGET_S = 420  # an upper bound: the test stops the run (SIGTERM) once a newer version is served
NEEDLES = ("ray::", "RolloutActor")
STARTUP_S = 600  # the endpoints line comes once the loop has started: minutes on a loaded 2-core machine


class ActClient(LoopingClient):
    """POST /act with one CartPole observation."""

    def __init__(self, url: str):
        super().__init__()
        self.url = url

    def _once(self, http: httpx.Client, i: int) -> None:
        r = http.post(self.url, json={"obs": [0.01, 0.0, 0.02, 0.0]})
        if r.status_code == 200:
            self.ok.append((time.monotonic(), int(r.json()["version"])))
        else:
            self._fail(f"act {r.status_code} {r.text[:200]}")


def test_kill_the_rollout_actor(tmp_path):
    run_dir, http_port = tmp_path / "run", free_port()
    proc = CliProcess(
        "run", "configs/cartpole.yaml", "--budget-s", str(BUDGET_S), "--run-dir", str(run_dir),
        "--set", f"serving.http_port={http_port}", "--set", "cluster.include_dashboard=false",
        "--set", "run.progress_interval_s=2", "--set", "loops.cartpole.eval.stop_when_solved=false",
        "--set", "loops.cartpole.learning.publish_every=20", "--set", "loops.cartpole.hidden=[32]",
        # room for every row of the run: an evicted row would read as a lost one
        "--set", "replay.tables.cartpole.capacity=2000000",
    )
    client = ActClient(f"http://127.0.0.1:{http_port}/v1/policies/cartpole/act")
    started = time.monotonic()
    try:
        proc.wait_for_line("evolve: endpoints", timeout_s=STARTUP_S)
        ends_by = time.monotonic() + BUDGET_S
        client.start()
        wait_until(lambda: client.version_at(time.monotonic()) >= 2, BUDGET_S // 2, "a first published version")
        killed_at = time.monotonic()
        before = {p for p, _ in ray_processes(proc.proc.pid, *NEEDLES)}
        pid, _ = sigkill(proc.proc.pid, *NEEDLES)
        respawned = wait_until(
            lambda: time.monotonic() if set(p for p, _ in ray_processes(proc.proc.pid, *NEEDLES)) - before else None,
            120, "a new rollout actor process")
        # newer than what was live once the actor was back: its rows feed the learner again
        version = client.version_at(respawned)
        newer = wait_until(lambda: client.first_version_after(respawned, version), ends_by - time.monotonic(),
                           f"a version newer than v{version} served after the respawn")
    finally:
        client.stop()
        if proc.proc.poll() is None:
            proc.proc.send_signal(signal.SIGTERM)
        rc = proc.wait(timeout_s=240)
        elapsed = time.monotonic() - started
    assert rc == 0, proc.output[-3000:]
    summary = json.loads((run_dir / "summary.json").read_text())
    # rows the shards acknowledged over the run (no shard restarted, nothing evicted): each must be stored
    acked = summary["run"]["replay"]["cartpole"]["inserts"]
    stored = exported_column(run_dir, "cartpole", "id", tmp_path)
    twice = [i for i, n in Counter(stored).items() if n > 1]
    stats = summary["loops"]["cartpole"]
    failed = [(t, what) for t, what in client.failed if t > killed_at]
    report("rollout_actor", respawn_s=round(respawned - killed_at, 2), new_version_after_s=round(newer - killed_at, 2),
           version_at_respawn=version, failed_requests=len(failed), rows_acked=acked, rows_exported=len(stored),
           rows_lost=max(acked - len(set(stored)), 0), rows_stored_twice=len(twice),
           env_steps=stats.get("env_steps"), test_s=round(elapsed, 1))
    for t, what in failed[:5]:
        print(f"  failed at +{t - killed_at:.2f}s: {what}")
    assert len(set(stored)) >= acked, f"the shards acknowledged {acked} rows, the export has {len(set(stored))}"
    assert not twice, f"{len(twice)} rows stored more than once: {twice[:5]}"
