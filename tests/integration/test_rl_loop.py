"""The RL loop on a real embedded cluster: actors -> replay -> Ray Train -> publisher -> Serve and actors.

Taxi with tabular Q is the cheapest real loop: one `evolve run` for the
module, asked not to stop when solved so the budget leaves room to kill a
rollout actor and watch it come back.  Learning to the threshold is the
`-m slow` tier's job (and the acceptance runs); here the wiring is checked.
"""

import json
import os
import signal

import httpx
import pytest
import ray

from tests.conftest import free_port
from tests.integration.helpers import CliProcess, serving, wait_until

pytestmark = pytest.mark.integration

BUDGET_S = 100
ACTOR = "evolve-taxi-actor-0"


@pytest.fixture(scope="module")
def taxi_run(tmp_path_factory):
    tmp = tmp_path_factory.mktemp("taxi")
    http_port, dash_port = free_port(), free_port()
    proc = CliProcess(
        "run", "configs/taxi.yaml", "--budget-s", str(BUDGET_S), "--run-dir", str(tmp / "run"),
        "--set", f"serving.http_port={http_port}", "--set", f"cluster.dashboard_port={dash_port}",
        "--set", "run.progress_interval_s=2", "--set", "loops.taxi.eval.stop_when_solved=false",
        "--set", "serving.exploration=epsilon",
    )
    with serving(proc, timeout_s=120):
        yield {"proc": proc, "run": tmp / "run", "http": f"http://127.0.0.1:{http_port}"}


def _act(http: str, policy: str, obs) -> httpx.Response:
    return httpx.post(f"{http}/v1/policies/{policy}/act", json={"obs": obs}, timeout=10)


def test_published_versions_reach_serve(taxi_run):
    http = taxi_run["http"]
    wait_until(lambda: _act(http, "taxi", 3).status_code == 200, 150, "a live taxi policy on Serve")
    body = _act(http, "taxi", 3).json()
    assert body["policy_id"] == "taxi" and body["version"] >= 1
    assert 0 <= body["action"] < 6 and len(body["q_values"]) == 6
    # epsilon 0.1 over 6 actions: the greedy one at 0.9 + 0.1 / 6, each other at 0.1 / 6
    assert sorted(body["action_probs"]) == pytest.approx([0.1 / 6] * 5 + [0.9 + 0.1 / 6])
    assert body["propensity"] == pytest.approx(body["action_probs"][body["action"]])
    first = body["version"]
    wait_until(lambda: _act(http, "taxi", 3).json()["version"] > first, 60, "a newer version on Serve")
    batch = _act(http, "taxi", [[1], [2], [499]]).json()
    assert len(batch["action"]) == 3


def test_bad_requests_get_a_4xx_with_the_reason(taxi_run):
    http = taxi_run["http"]
    bad_state = _act(http, "taxi", 500)
    assert bad_state.status_code == 422 and "state must be an integer" in bad_state.text
    assert _act(http, "taxi", [1.0, 2.0]).status_code == 422
    unknown = _act(http, "nope", 3)
    assert unknown.status_code == 404 and "unknown policy" in unknown.text
    malformed = httpx.post(f"{http}/v1/policies/taxi/act", json={"observation": 3}, timeout=10)
    assert malformed.status_code == 422


def test_a_killed_rollout_actor_restarts_and_keeps_writing(taxi_run):
    # the run's own cluster (not "auto": other local clusters may be newer)
    address = taxi_run["proc"].wait_for_line("embedded at", timeout_s=5).split("embedded at")[1].strip()
    ray.init(address=address, namespace="evolve", log_to_driver=False)
    try:
        actor = ray.get_actor(ACTOR)
        before = ray.get(actor.stats.remote(), timeout=30)
        os.kill(ray.get(actor.pid.remote(), timeout=30), signal.SIGKILL)

        def restarted():
            try:
                stats = ray.get(actor.stats.remote(), timeout=10)
            except ray.exceptions.RayActorError:
                return None
            return stats["incarnation"] != before["incarnation"] and stats["rows_written"] > 0 and stats["running"]

        wait_until(restarted, 90, "the rollout actor back after SIGKILL")
        stats = ray.get(actor.stats.remote(), timeout=10)
        assert stats["error"] is None and stats["policy_version"] >= 1  # it found the live policy again
    finally:
        ray.shutdown()


def test_summary_reports_the_loop(taxi_run):
    proc = taxi_run["proc"]
    assert proc.wait(timeout_s=BUDGET_S + 180) == 0, proc.output[-3000:]
    summary = json.loads((taxi_run["run"] / "summary.json").read_text())
    taxi = summary["loops"]["taxi"]
    assert taxi["versions_published"] >= 2 and taxi["learner_updates"] > 0
    assert taxi["env_steps"] > 10_000 and taxi["episodes"] > 0
    assert taxi["publish_latency_p50_s"] is not None and taxi["publish_latency_p95_s"] >= taxi["publish_latency_p50_s"]
    assert taxi["curve"] and taxi["eval_return"] is not None
    for key in ("solved", "time_to_solve_s", "env_steps_to_solve"):
        assert key in taxi
    events = [json.loads(line) for line in (taxi_run["run"] / "events.jsonl").read_text().splitlines()]
    evals = [e for e in events if e.get("loop") == "taxi" and e.get("event") == "eval"]
    assert evals and all(e["episodes"] == 50 for e in evals)
    assert any(e.get("event") == "learner" for e in events)
    # the loop's progress line (cluster/progress_lines.py: env_steps as steps=, eval_return as ret=)
    assert any(line.split()[:1] == ["taxi"] and "steps=" in line and "ret=" in line for line in proc.lines), \
        proc.output[-3000:]
