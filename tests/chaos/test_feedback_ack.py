"""An acknowledgement means stored, on a live feedback loop: the replay write fails under the joiner
(every shard frozen, then SIGKILLed while the joiner's commit is in flight), the client retries its
feedback until it is accepted, and the row is in `evolve replay export` exactly once.

    start run -> a live version -> SIGSTOP the shards -> predict + feedback: not acknowledged
    -> SIGKILL the shards (mid-commit) -> the client retries the same feedback until 200
    -> SIGTERM: the run stops (rc 0) -> the export holds the row once; the joiner gave a commit up
"""

from __future__ import annotations

import json
import os
import signal
import time

import httpx
import pytest

from tests.chaos.conftest import start_feedback_run
from tests.chaos.kill import exported_columns, ray_processes, report
from tests.chaos.live import STARTUP_S
from tests.integration.helpers import wait_until

pytestmark = [pytest.mark.chaos, pytest.mark.timeout(1500)]

SHARD = ("ray::", "ReplayShard")
FROZEN_S = 15  # past the joiner's durable timeout and its commit timeout (10 s each)


def test_feedback_whose_write_failed_is_retried_and_stored_once(tmp_path):
    run_dir = tmp_path / "run"
    proc, http = start_feedback_run(run_dir, budget_s=900)
    answers: list[tuple[float, int, str]] = []  # (seconds after the kill, status, detail) of each try
    shards: list[int] = []
    try:
        proc.wait_for_line("evolve: endpoints", timeout_s=STARTUP_S)
        with httpx.Client(timeout=60) as client:
            wait_until(lambda: client.post(f"{http}/v1/predict", json={"text": "还不错"}).status_code == 200,
                       300, "a live version")
            shards = [pid for pid, _ in ray_processes(proc.proc.pid, *SHARD)]
            assert shards, "no replay shard process in the run"
            for pid in shards:
                os.kill(pid, signal.SIGSTOP)
            frozen_at = time.monotonic()
            pred = client.post(f"{http}/v1/predict", json={"text": "质量很好，物流也快"}).json()
            body = {"event_id": pred["event_id"], "label": "pos"}
            first = client.post(f"{http}/v1/feedback", json=body)
            # the shards stay frozen past the joiner's commit timeout: its write fails
            time.sleep(max(0.0, FROZEN_S - (time.monotonic() - frozen_at)))
            for pid in shards:
                os.kill(pid, signal.SIGKILL)  # SIGKILL ends a stopped process too
            killed_at = time.monotonic()
            answered_at = frozen_at + first.elapsed.total_seconds()
            answers.append((round(answered_at - killed_at, 2), first.status_code, first.text[:200]))

            def retried() -> bool:
                r = client.post(f"{http}/v1/feedback", json=body)
                answers.append((round(time.monotonic() - killed_at, 2), r.status_code, r.text[:200]))
                return r.status_code == 200 and r.json()["accepted"]

            wait_until(retried, 300, "the retried feedback accepted", every_s=1.0)
            accepted_after_s = round(time.monotonic() - killed_at, 2)
    finally:
        for pid in shards:  # never leave a frozen process behind
            try:
                os.kill(pid, signal.SIGCONT)
            except ProcessLookupError:
                pass
        if proc.proc.poll() is None:
            proc.proc.send_signal(signal.SIGTERM)
        rc = proc.wait(timeout_s=240)
    assert rc == 0, proc.output[-3000:]
    assert first.status_code == 503, (first.status_code, first.text)  # not acknowledged while not stored
    rows = exported_columns(run_dir, "sentiment", ["event_id", "label"], tmp_path)  # the loop's feedback table
    mine = [label for e, label in zip(rows["event_id"], rows["label"]) if e == body["event_id"]]
    joiner = json.loads((run_dir / "summary.json").read_text())["loops"]["sentiment"]["joiner"]
    report("feedback_write_failed", tries=len(answers), accepted_after_kill_s=accepted_after_s,
           stored=len(mine), commits_given_up=joiner["commits_given_up"], reopened=joiner["reopened"],
           write_errors=joiner["write_errors"], statuses=[s for _, s, _ in answers])
    for t, status, detail in answers:
        print(f"  {t:+.2f}s {status} {detail}")
    assert len(mine) == 1, f"the feedback row is stored {len(mine)} times"
    assert joiner["commits_given_up"] >= 1 and joiner["reopened"] >= 1, joiner  # the write did fail
