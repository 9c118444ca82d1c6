"""`evolve run` on an embedded local Ray: dashboard, gateway endpoints, status, budget, summary."""

import json

import httpx
import pytest
import torch

from core.registry import PolicyRegistry
from tests.conftest import free_port
from tests.integration.helpers import CliProcess, http_get_json, run_cli, serving, wait_until

pytestmark = pytest.mark.integration

BUDGET_S = 45


@pytest.fixture(scope="module")
def live_run(tmp_path_factory):
    """One embedded cluster for the module: a real `evolve run` with a budget."""
    tmp = tmp_path_factory.mktemp("embedded")
    registry = PolicyRegistry(tmp / "registry")
    v1 = registry.publish("cartpole", {"w": torch.ones(3)}, {"metrics": {"eval_return": 21.0}})
    registry.promote("cartpole", v1)
    http_port, dash_port = free_port(), free_port()
    proc = CliProcess(
        "run", "configs/default.yaml", "--budget-s", str(BUDGET_S), "--run-dir", str(tmp / "run"),
        "--set", f"serving.http_port={http_port}", "--set", f"cluster.dashboard_port={dash_port}",
        "--set", f"registry.uri={tmp / 'registry'}", "--set", "run.progress_interval_s=2",
        "--set", "loops=[]",  # the spine: cluster, gateway, budget, summary (the loops have their own tests)
    )
    with serving(proc, timeout_s=120) as endpoint_line:
        yield {"proc": proc, "tmp": tmp, "http": f"http://127.0.0.1:{http_port}", "dash_port": dash_port,
               "endpoint_line": endpoint_line}


def test_prints_dashboard_and_endpoint_urls(live_run):
    dash = live_run["proc"].wait_for_line("evolve: dashboard", timeout_s=5)
    assert f"http://127.0.0.1:{live_run['dash_port']}" in dash
    assert live_run["http"] + "/healthz" in live_run["endpoint_line"]
    # the dashboard answers on loopback (401 without the token: auth is on)
    status = httpx.get(f"http://127.0.0.1:{live_run['dash_port']}/api/version", timeout=5).status_code
    assert status in (200, 401)


def test_gateway_health_and_models(live_run):
    assert wait_until(lambda: http_get_json(live_run["http"] + "/healthz")["status"] == "ok", 30, "healthz")
    (policy,) = http_get_json(live_run["http"] + "/v1/models")["policies"]
    assert policy["policy_id"] == "cartpole" and policy["live_version"] == 1
    assert policy["versions"][0]["metrics"] == {"eval_return": 21.0}


def test_status_sees_the_running_cluster(live_run):
    res = run_cli("status", "--address", "auto", timeout_s=60)
    assert res.returncode == 0, res.stderr
    assert "1 node(s) alive" in res.stdout
    assert "serve app evolve: RUNNING" in res.stdout


def test_exits_zero_at_the_budget_with_a_summary(live_run):
    proc, tmp = live_run["proc"], live_run["tmp"]
    assert proc.wait(timeout_s=BUDGET_S + 90) == 0, proc.output
    summary = json.loads((tmp / "run" / "summary.json").read_text())
    assert summary["run"]["stopped_by"] == "budget"
    assert summary["run"]["ray_version"].startswith("2.60")
    assert BUDGET_S - 1 <= summary["run"]["wall_s"] <= BUDGET_S + 30
    assert summary["loops"] == {}
    events = [json.loads(line) for line in (tmp / "run" / "events.jsonl").read_text().splitlines()]
    assert events[0]["event"] == "started" and events[-1]["event"] == "finished"
    assert all({"time", "loop", "event"} <= set(e) for e in events)
    assert sum(e["event"] == "progress" for e in events) >= 3
    assert (tmp / "run" / "config.yaml").is_file()
