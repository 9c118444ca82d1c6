"""`evolve run` on an embedded local Ray: dashboard, gateway endpoints, status, budget, summary."""

import json
import os
import subprocess
import sys
from pathlib import Path

import httpx
import pytest
import torch

from core.storage.registry import PolicyRegistry
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
        "--set", "loops={}",  # the spine: cluster, gateway, budget, summary (the loops have their own tests)
    )
    with serving(proc, timeout_s=120) as endpoint_line:
        yield {"proc": proc, "tmp": tmp, "http": f"http://127.0.0.1:{http_port}", "dash_port": dash_port,
               "endpoint_line": endpoint_line}


def _auth_mode() -> str:
    """The mode this module's run was started under: tests/conftest.py sets RAY_AUTH_MODE (token
    unless the shell said otherwise) before the run is launched, and the run inherits it."""
    mode = os.environ["RAY_AUTH_MODE"].lower()
    assert mode in ("token", "disabled"), f"RAY_AUTH_MODE={mode!r}: this test knows token and disabled"
    return mode


def _ray_auth_token() -> str:
    """What `ray get-auth-token` prints (the token the run's hint points to), in the run's environment."""
    ray_cli = Path(sys.executable).with_name("ray")
    cmd = [str(ray_cli)] if ray_cli.is_file() else [sys.executable, "-m", "ray.scripts.scripts"]
    res = subprocess.run([*cmd, "get-auth-token"], capture_output=True, text=True, timeout=60)
    assert res.returncode == 0 and res.stdout.strip(), f"ray get-auth-token failed: {res.stderr[-2000:]}"
    return res.stdout.strip()


def _dashboard_version(base: str, headers: dict[str, str] | None = None) -> httpx.Response:
    """GET /api/version once the dashboard's module behind it is up (a 404/5xx while it starts is
    asked again); the auth middleware's 401/403 come back as they are."""

    def answered():
        r = httpx.get(f"{base}/api/version", headers=headers or {}, timeout=10)
        return r if r.status_code not in (404, 500, 502, 503, 504) else None

    return wait_until(answered, 60, "the dashboard's /api/version")


def test_prints_dashboard_and_endpoint_urls(live_run):
    dash = live_run["proc"].wait_for_line("evolve: dashboard", timeout_s=5)
    assert f"http://127.0.0.1:{live_run['dash_port']}" in dash
    assert live_run["http"] + "/healthz" in live_run["endpoint_line"]
    mode = _auth_mode()
    assert ("ray get-auth-token" in dash) == (mode == "token"), dash  # the hint only where a token is asked for
    base = f"http://127.0.0.1:{live_run['dash_port']}"
    # public even with token auth on: the dashboard says which mode it runs in
    said = wait_until(lambda: httpx.get(f"{base}/api/authentication_mode", timeout=5).json(), 60, "the dashboard")
    assert said == {"authentication_mode": mode}
    anonymous = _dashboard_version(base)
    if mode == "disabled":  # no auth: anyone on loopback gets the answer
        assert anonymous.status_code == 200, (anonymous.status_code, anonymous.text)
        assert anonymous.json()["ray_version"].startswith("2.60")
        return
    # token auth (the default): no token 401, a wrong one 403, the one `ray get-auth-token` prints 200
    assert anonymous.status_code == 401, (anonymous.status_code, anonymous.text)
    wrong = _dashboard_version(base, {"Authorization": "Bearer not-the-token"})
    assert wrong.status_code == 403, (wrong.status_code, wrong.text)
    authed = _dashboard_version(base, {"Authorization": f"Bearer {_ray_auth_token()}"})
    assert authed.status_code == 200, (authed.status_code, authed.text)
    assert authed.json()["ray_version"].startswith("2.60")


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
