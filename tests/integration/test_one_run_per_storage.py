"""One run per storage, with real `evolve run` processes: a run takes over the hold a killed
process left on its directory, and while it is live a second `evolve run` on its directory, or
on its run.storage (s3:// on the SeaweedFS gateway of tests/s3_server.py), exits 2 naming it."""

from __future__ import annotations

import json
import os
import signal
import socket
import subprocess
import sys
import uuid

import pytest

from tests.conftest import free_port
from tests.integration.helpers import REPO, CliProcess, run_cli
from tests.s3_server import apply_env, restore_env, seaweedfs

pytestmark = pytest.mark.integration

TINY = ["--set", "loops={}", "--set", "serving.enabled=false"]  # the spine alone: Ray, the hold, the budget
HOLDER = r"""
import sys
from core.storage.run_hold import RunHold
RunHold([sys.argv[1]], "crashed").acquire()
print("held", flush=True)
sys.stdin.readline()
"""


@pytest.fixture(scope="module")
def storage(tmp_path_factory):
    with seaweedfs(tmp_path_factory.mktemp("s3")) as server:
        before = apply_env(server)  # the runs inherit the gateway's address and keys
        try:
            yield server.make_bucket(f"runs-{uuid.uuid4().hex[:8]}") + "/evolve"
        finally:
            restore_env(before)


def _leave_a_stale_hold(run_dir) -> int:
    """A process that holds the directory and is SIGKILLed: its record stays, its flock does not."""
    proc = subprocess.Popen([sys.executable, "-c", HOLDER, str(run_dir)], cwd=REPO,
                            env={**os.environ, "PYTHONPATH": str(REPO)}, stdin=subprocess.PIPE,
                            stdout=subprocess.PIPE, text=True)
    assert proc.stdout.readline().strip() == "held"
    proc.kill()
    proc.wait(timeout=30)
    return proc.pid


def test_a_second_evolve_run_on_a_live_runs_directory_or_storage_exits_2_naming_the_first(tmp_path, storage):
    run_dir = tmp_path / "first"
    crashed_pid = _leave_a_stale_hold(run_dir)
    first = CliProcess("run", "configs/default.yaml", "--run-dir", str(run_dir), "--budget-s", "600", *TINY,
                       "--set", f"run.storage={storage}", "--set", f"cluster.dashboard_port={free_port()}",
                       "--set", "run.progress_interval_s=2")
    try:
        taken = first.wait_for_line("taken over", timeout_s=60)
        assert f"run directory {run_dir}" in taken and f"pid {crashed_pid}" in taken, taken
        first.wait_for_line("evolve: Ray", timeout_s=180)  # live: its cluster is up
        holder = json.loads((run_dir / "run.lock").read_text())
        assert holder["pid"] == first.proc.pid

        same_dir = run_cli("run", "configs/default.yaml", "--run-dir", str(run_dir), "--budget-s", "5", *TINY,
                           timeout_s=120)
        other_dir = run_cli("run", "configs/default.yaml", "--run-dir", str(tmp_path / "second"), "--budget-s", "5",
                            *TINY, "--set", f"run.storage={storage}", timeout_s=120)
        for refused, what in ((same_dir, f"run directory {run_dir}"), (other_dir, f"storage {storage}")):
            err = refused.stderr.strip()
            print(f"exit {refused.returncode}: {err}")
            assert refused.returncode == 2, (refused.returncode, refused.stdout[-2000:], err[-2000:])
            assert err.count("\n") == 0, err
            assert err.startswith(f"evolve: refused: {what} is held by run 'default'"), err
            for part in (f"id {holder['run_id']}", f"pid {first.proc.pid}", f"on {socket.gethostname()}", "started 2"):
                assert part in err, err
        assert first.proc.poll() is None, "the first run stopped"
        assert not (tmp_path / "second" / "events.jsonl").exists()  # refused before writing anything

        first.proc.send_signal(signal.SIGTERM)  # a clean stop lets go of both
        assert first.wait(timeout_s=120) == 0, first.output[-3000:]
        assert (run_dir / "run.lock").read_text() == ""
        events = [json.loads(line) for line in (run_dir / "events.jsonl").read_text().splitlines()]
        assert [e["event"] for e in events if e["loop"] == "run"].count("finished") == 1
    finally:
        first.kill()
        print(first.output[-6000:])
