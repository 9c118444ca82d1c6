"""The CartPole loop gated on its own /act traffic, on a real embedded cluster.

One `evolve run` for the module with `rl.gate.stages: [ope, canary]` and a
short canary: the learner's versions reach Serve only through the RL gate,
clients play episodes through POST /act (batched, one client key per row),
and a canary answers some clients with the candidate.  Learning to solve
through the gate is the acceptance run's job; here the wiring is checked.
"""

import json

import httpx
import pytest

from core.registry import PolicyRegistry
from tests.conftest import free_port
from tests.integration.helpers import CliProcess, serving, wait_until

pytestmark = pytest.mark.integration

BUDGET_S = 120


@pytest.fixture(scope="module")
def gated_run(tmp_path_factory):
    tmp = tmp_path_factory.mktemp("gated")
    http_port, dash_port = free_port(), free_port()
    proc = CliProcess(
        "run", "configs/cartpole.yaml", "--budget-s", str(BUDGET_S), "--run-dir", str(tmp / "run"),
        "--set", f"serving.http_port={http_port}", "--set", f"cluster.dashboard_port={dash_port}",
        "--set", "run.progress_interval_s=2", "--set", "rl.stop_when_solved=false",
        "--set", "serving.exploration=epsilon", "--set", "rl.gate.stages=[ope,canary]",
        "--set", "rl.gate.ope.min_episodes=10", "--set", "rl.gate.canary.min_episodes=5",
        "--set", "rl.gate.canary.max_episodes=15", "--set", "rl.gate.canary.fraction=0.3",
        "--set", "rl.traffic.max_requests_per_s=20", "--set", "rl.traffic.episodes_at_once=8",
    )
    with serving(proc, timeout_s=120):
        yield {"proc": proc, "run": tmp / "run", "http": f"http://127.0.0.1:{http_port}"}


def test_act_answers_each_row_for_its_client(gated_run):
    url = f"{gated_run['http']}/v1/policies/cartpole/act"
    wait_until(lambda: httpx.post(url, json={"obs": [0.0] * 4}, timeout=10).status_code == 200, 120,
               "a live cartpole policy on Serve")
    body = httpx.post(url, json={"obs": [[0.0] * 4] * 3, "clients": ["a", "b", "c"]}, timeout=10).json()
    assert len(body["action"]) == 3 and len(body["propensity"]) == 3
    versions = body["version"] if isinstance(body["version"], list) else [body["version"]] * 3
    assert all(v >= 1 for v in versions)
    wrong = httpx.post(url, json={"obs": [[0.0] * 4] * 2, "clients": ["a"]}, timeout=10)
    assert wrong.status_code == 422 and "one key per observation" in wrong.text


def test_versions_go_live_only_through_the_gate(gated_run):
    proc = gated_run["proc"]
    assert proc.wait(timeout_s=BUDGET_S + 180) == 0, proc.output[-3000:]
    cart = json.loads((gated_run["run"] / "summary.json").read_text())["loops"]["cartpole"]
    gate, clients = cart["gate"], cart["act_clients"]
    assert gate["stages"] == ["ope", "canary"] and clients["episodes"] > 50 and clients["failed"] == 0
    events = [json.loads(line) for line in (gated_run["run"] / "events.jsonl").read_text().splitlines()]
    kinds = [e.get("event") for e in events if e.get("loop") == "cartpole"]
    assert "canary_started" in kinds and "canary_ended" in kinds, sorted(set(kinds))
    registry = PolicyRegistry(gated_run["run"] / "registry")
    live_history = registry.stages("cartpole")["live"]["history"]
    assert gate["promoted"] >= 1 and len(live_history) >= 2
    for version in live_history[1:]:  # every version after the first went live through both stages
        record = registry.get("cartpole", version).gate
        assert record["decision"] == "promote" and [s["stage"] for s in record["stages"]] == ["ope", "canary"]
    assert registry.stages("cartpole")["canary"]["version"] is None  # a canary never outlives the run
