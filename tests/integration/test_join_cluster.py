"""`evolve run --address` joins a cluster started by `ray start` (as on a `ray up` head)."""

import json
import os
import secrets
import signal
import subprocess
import sys
from pathlib import Path

import pytest

from tests.conftest import free_port
from tests.integration.helpers import CliProcess, run_cli

pytestmark = pytest.mark.integration

RAY = str(Path(sys.executable).with_name("ray"))


@pytest.fixture(scope="module")
def head(tmp_path_factory):
    """A token-auth head node started the way ray_cluster.yaml starts one."""
    env = {"RAY_AUTH_MODE": "token", "RAY_AUTH_TOKEN": secrets.token_hex(32)}
    saved = {k: os.environ.get(k) for k in env}
    os.environ.update(env)
    port = free_port()
    started = subprocess.run(
        [RAY, "start", "--head", f"--port={port}", "--num-cpus=2", "--include-dashboard=false",
         "--disable-usage-stats", f"--temp-dir={tmp_path_factory.mktemp('ray')}"],
        capture_output=True, text=True, timeout=120,
    )
    assert started.returncode == 0, started.stdout + started.stderr
    try:
        yield f"127.0.0.1:{port}"
    finally:
        subprocess.run([RAY, "stop", "--force"], capture_output=True, timeout=120)
        for k, v in saved.items():
            if v is None:
                os.environ.pop(k, None)
            else:
                os.environ[k] = v


def test_status_reports_the_head(head):
    res = run_cli("status", "--address", head, timeout_s=90)
    assert res.returncode == 0, res.stderr
    assert "1 node(s) alive" in res.stdout and "CPU=2" in res.stdout


def test_run_joins_and_stops_cleanly_on_ctrl_c(head, tmp_path):
    proc = CliProcess(
        "run", "configs/default.yaml", "--address", head, "--run-dir", str(tmp_path / "run"),
        "--set", f"serving.http_port={free_port()}", "--set", "run.progress_interval_s=1", "--set", "loops={}",
    )
    try:
        assert proc.wait_for_line("cluster at", timeout_s=120).startswith("evolve: Ray ")
        proc.wait_for_line("CPU", timeout_s=60)  # the first progress line: the loop is being driven
        proc.proc.send_signal(signal.SIGINT)
        assert proc.wait(timeout_s=90) == 0, proc.output
    finally:
        proc.kill()
    summary = json.loads((tmp_path / "run" / "summary.json").read_text())
    assert summary["run"]["embedded"] is False
    assert summary["run"]["stopped_by"] == "interrupt"
    # the run removed its Serve app but left the user's cluster up
    res = run_cli("status", "--address", head, timeout_s=90)
    assert res.returncode == 0 and "serve app evolve" not in res.stdout, res.stdout + res.stderr
