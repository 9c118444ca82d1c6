"""SIGKILL the episode joiner while an external client plays through the API (client episodes).

The joiner holds the open episodes in memory, so its restart costs the client its open episode (a
404 on it: the client starts a new one); it never costs an acknowledged step: every step the server
acknowledged is in the replay export, once.
"""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import httpx
import pytest

from tests.chaos.kill import exported_column, ray_processes, report, sigkill
from tests.conftest import free_port
from tests.integration.helpers import CliProcess, serving, wait_until

pytestmark = [pytest.mark.chaos, pytest.mark.timeout(900)]

CLIENT = Path(__file__).resolve().parents[1] / "integration" / "external_client.py"
NEEDLES = ("ray::", "EpisodeJoiner")


def test_kill_the_episode_joiner(tmp_path):
    http_port, dash_port = free_port(), free_port()
    proc = CliProcess(
        "run", "configs/cartpole.yaml", "--budget-s", "240", "--run-dir", str(tmp_path / "run"),
        "--set", f"serving.http_port={http_port}", "--set", f"cluster.dashboard_port={dash_port}",
        "--set", "loops.cartpole.experience=clients", "--set", "loops.cartpole.eval.stop_when_solved=false",
    )
    acks = tmp_path / "acks.txt"
    with serving(proc, timeout_s=180):
        base = f"http://127.0.0.1:{http_port}/v1/policies/cartpole"
        wait_until(lambda: httpx.post(f"{base}/act", json={"obs": [0.0] * 4}, timeout=10).status_code == 200, 120,
                   "the first version served")
        first = subprocess.Popen([sys.executable, str(CLIENT), base, "--acks", str(acks), "--episodes", "1000",
                                  "--prefix", "one"], stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
        wait_until(lambda: acks.exists() and len(acks.read_text().splitlines()) >= 200, 120, "200 acknowledged steps")
        before = {p for p, _ in ray_processes(proc.proc.pid, *NEEDLES)}
        sigkill(proc.proc.pid, *NEEDLES)
        first.wait(timeout=120)  # its open episode is forgotten: 404, and the client says so
        acked_before = len(acks.read_text().splitlines())
        wait_until(lambda: {p for p, _ in ray_processes(proc.proc.pid, *NEEDLES)} - before, 120, "a new joiner")
        second = subprocess.run([sys.executable, str(CLIENT), base, "--acks", str(acks), "--episodes", "3",
                                 "--prefix", "two"], capture_output=True, text=True, timeout=180)
        assert second.returncode == 0, second.stdout + second.stderr
        assert proc.wait(timeout_s=400) == 0, proc.output[-3000:]
    acked = [line.split() for line in acks.read_text().splitlines()]
    ids = exported_column(tmp_path / "run", "cartpole", "id", tmp_path)
    stored = [i for i in ids if i.startswith("cartpole:")]
    missing = [f"cartpole:{e}:{s}" for e, s in acked if f"cartpole:{e}:{s}" not in set(stored)]
    report("episode_joiner", acknowledged=len(acked), acknowledged_before_kill=acked_before, stored=len(stored),
           missing=len(missing), first_client_exit=first.returncode)
    assert not missing, missing[:5]
    assert len(stored) == len(set(stored)), "a client step stored twice"
    assert first.returncode != 0 and "404" in first.stdout.read(), "the first client did not hear of its episode"
