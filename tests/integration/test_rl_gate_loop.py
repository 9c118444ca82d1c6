"""The CartPole loop gated on its own /act traffic, on a real embedded cluster.

One `evolve run` for the module with `loops.cartpole.gate.stages: [ope, canary]` and a
short canary: the learner's versions reach Serve only through the RL gate,
clients play episodes through POST /act (batched, one client key per row),
and a canary answers some clients with the candidate.  Learning to solve
through the gate is the acceptance run's job; here the wiring is checked. No
answer comes from a non-finite number: observations beyond float32 are refused,
and a version published past the gate whose Q-values overflow is never answered
from; the policy server tells the gate, which rolls it back.
"""

import json
import math

import httpx
import numpy as np
import pytest
import ray

from core.storage.registry import PolicyRegistry
from core.models.q import spec_for_env
from core.models.q_policy import QPolicy
from serving.publisher import PUBLISHER_NAME
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
        "--set", "run.progress_interval_s=2", "--set", "loops.cartpole.eval.stop_when_solved=false",
        "--set", "serving.exploration=epsilon", "--set", "loops.cartpole.gate.stages=[ope,canary]",
        "--set", "loops.cartpole.gate.ope.min_rows=10", "--set", "loops.cartpole.gate.canary.min_requests=5",
        "--set", "loops.cartpole.gate.canary.max_requests=15", "--set", "loops.cartpole.gate.canary.fraction=0.3",
        "--set", "loops.cartpole.traffic.max_requests_per_s=20", "--set", "loops.cartpole.traffic.episodes_at_once=8",
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


def test_act_never_answers_from_a_non_finite_number(gated_run):
    url = f"{gated_run['http']}/v1/policies/cartpole/act"
    for value in (1e39, -1e39):  # infinite once cast to float32
        answer = httpx.post(url, json={"obs": [0.0, value, 0.0, 0.0]}, timeout=10)
        assert answer.status_code == 422 and answer.json()["detail"].startswith("obs[1] is "), answer.text
    # within float32: answered only when every Q-value is finite (a trained network overflows on it)
    answer = httpx.post(url, json={"obs": [0.0, 1e38, 0.0, 0.0]}, timeout=10)
    if answer.status_code == 200:
        assert all(isinstance(q, float) and math.isfinite(q) for q in answer.json()["q_values"]), answer.text
    else:
        assert answer.status_code == 422 and answer.json()["detail"].startswith("obs: "), answer.text


def test_a_version_that_cannot_answer_is_never_answered_from_and_the_gate_rolls_it_back(gated_run):
    """Published straight to the publisher (past the gate, which would refuse it): weights so large
    that every Q-value overflows. The replicas answer 503 while it is live, tell the gate, and the
    gate rolls live back to the version before it."""
    url = f"{gated_run['http']}/v1/policies/cartpole/act"
    address = gated_run["proc"].wait_for_line("embedded at", timeout_s=5).split("embedded at")[1].strip()
    spec = spec_for_env("CartPole-v1", "dqn", [128, 128])
    weights = {k: np.full(tuple(v.shape), 1e30, dtype=np.float32) for k, v in QPolicy(spec).model.state_dict().items()}
    ray.init(address=address, namespace="evolve", log_to_driver=False)
    try:
        publisher = ray.get_actor(PUBLISHER_NAME)
        unsound = ray.get(publisher.publish.remote("cartpole", weights, {}, spec=spec.to_dict()), timeout=60)
    finally:
        ray.shutdown()
    gated_run["unsound"] = unsound
    registry, answers = PolicyRegistry(gated_run["run"] / "registry"), []

    def rolled_back() -> bool:
        answer = httpx.post(url, json={"obs": [0.0] * 4}, timeout=10)
        answers.append((answer.status_code, answer.json()))
        return "rolled_back" in registry.get("cartpole", unsound).info

    wait_until(rolled_back, 60, f"the gate rolling back v{unsound}", every_s=0.05)
    assert "unservable" in registry.get("cartpole", unsound).info["rolled_back"]["reason"]
    assert registry.latest("cartpole", "live").version != unsound
    wait_until(lambda: httpx.post(url, json={"obs": [0.0] * 4}, timeout=10).json().get("version") not in
               (None, unsound), 60, "an answer from the version rolled back to")
    assert not [body for status, body in answers if status == 200 and body["version"] == unsound]
    refusals = [body["detail"] for status, body in answers if status != 200]
    assert all(f"v{unsound} is not answered from" in detail for detail in refusals), refusals[:3]


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
    unsound = gated_run.get("unsound")
    # every version after the first went live through both stages, but the one published past the
    # gate (and the one it was rolled back to, again)
    for version in set(live_history[1:]) - {live_history[0], unsound}:
        record = registry.get("cartpole", version).gate
        assert record["decision"] == "promote" and [s["stage"] for s in record["stages"]] == ["ope", "canary"]
    assert registry.stages("cartpole")["canary"]["version"] is None  # a canary never outlives the run
    mine = [e for e in events if e.get("loop") == "cartpole" and e.get("version", e.get("from")) == unsound]
    assert {e["event"] for e in mine} >= {"version_unservable", "rollback"}, mine
    assert gate["unservable"] == 1
