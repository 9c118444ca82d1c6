"""SIGKILL a Serve replica of the feedback app under live traffic (2 replicas, then 1).

A client that does what real clients do (no retries) counts every non-2xx and connection error;
after the kill a new version must still be published and served, and every feedback event the
app acknowledged must be in the replay store's `feedback` table (checked by `evolve replay export`).
"""

from __future__ import annotations

import time

import pytest

from tests.chaos.conftest import BUDGET_S, start_feedback_run
from tests.chaos.live import STARTUP_S
from tests.chaos.kill import CountingClient, exported_ids, report, sigkill
from tests.integration.helpers import wait_until

pytestmark = pytest.mark.chaos


def _kill_replica_and_check(tmp_path, replicas: int) -> dict:
    proc, http = start_feedback_run(tmp_path / "run", f"feedback.num_replicas={replicas}")
    client = CountingClient(http)
    try:
        proc.wait_for_line("evolve: endpoints", timeout_s=STARTUP_S)
        client.start()
        # wait for the learner's first candidate to go live, so the loop is fully turning
        wait_until(lambda: client.version_at(time.monotonic()) >= 2, 150, "a first promoted version")
        killed_at = time.monotonic()
        version = client.version_at(killed_at)
        pid, cmd = sigkill(proc.proc.pid, "ServeReplica", "feedback_server")
        back = wait_until(lambda: client.first_ok_after(killed_at + 0.5), 120, "a 200 predict after the kill")
        newer = wait_until(lambda: client.first_version_after(killed_at, version), 150,
                           f"a version newer than v{version} served after the kill")
    finally:
        client.stop()
        rc = proc.wait(timeout_s=BUDGET_S + 240)
    assert rc == 0, proc.output[-3000:]
    acked = set(client.acked)
    stored = exported_ids(tmp_path / "run", "feedback", "event_id", tmp_path)
    lost = acked - stored
    print(f"  exported {len(stored)} feedback rows; acked {len(acked)}; sample stored {sorted(stored)[:3]}")
    figures = dict(
        replicas=replicas, recovery_s=round(max(back - killed_at, 0), 2),
        new_version_after_s=round(newer - killed_at, 2), failed_requests=sum(t > killed_at for t, _ in client.failed),
        failed_before_kill=sum(t <= killed_at for t, _ in client.failed),
        feedback_acked=len(acked), feedback_lost=len(lost), killed=pid,
    )
    report(f"serve_replica[{replicas}]", **figures)
    for t, what in client.failed[:5] + client.failed[-5:]:
        print(f"  failed at +{t - killed_at:.2f}s: {what}")
    assert not lost, f"{len(lost)} acknowledged feedback events missing from the replay export: {sorted(lost)[:5]}"
    return figures


def test_kill_one_of_two_replicas(tmp_path):
    figures = _kill_replica_and_check(tmp_path, replicas=2)
    assert figures["failed_requests"] == 0, figures


def test_kill_the_only_replica(tmp_path):
    _kill_replica_and_check(tmp_path, replicas=1)  # failed requests are reported, not bounded
