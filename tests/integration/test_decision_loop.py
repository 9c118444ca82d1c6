"""configs/decisions.yaml end to end, shrunk: simulated users rank and reward over HTTP, the learner on Ray
Train learns from the joined decisions, the gate promotes on off-policy evidence, the users' reward rises
above the uniform policy's; summary.json holds the reward curve and each decision with its evidence."""

import json

import pytest

from tests.conftest import free_port
from tests.integration.helpers import run_cli

pytestmark = pytest.mark.integration

BUDGET_S = 120
SETS = ["cluster.include_dashboard=false", "run.progress_interval_s=5", "loops.decisions.gate.ope.min_rows=150",
        "loops.decisions.learning.candidate_every=20", "loops.decisions.users.requests_per_s=50"]


@pytest.fixture(scope="module")
def run(tmp_path_factory):
    tmp = tmp_path_factory.mktemp("decisions")
    sets = [a for s in [*SETS, f"serving.http_port={free_port()}"] for a in ("--set", s)]
    done = run_cli("run", "configs/decisions.yaml", "--budget-s", str(BUDGET_S), "--run-dir", str(tmp / "run"),
                   *sets, timeout_s=BUDGET_S + 180)
    assert done.returncode == 0, done.stdout[-4000:] + done.stderr[-4000:]
    return {"dir": tmp / "run", "out": done.stdout, "summary": json.loads((tmp / "run/summary.json").read_text())}


def test_the_gate_promotes_on_off_policy_evidence_and_the_users_reward_beats_uniform(run):
    loop = run["summary"]["loops"]["decisions"]
    promoted = [d for d in loop["decisions"] if d["decision"] == "promote"]
    assert promoted and loop["live_version"] > 1, (loop["decisions"], run["out"][-3000:])
    for d in promoted:
        (ope,) = [s for s in d["stages"] if s["stage"] == "ope"]
        assert ope["n"] >= 150 and ope["diff_ci"][0] <= ope["diff"] <= ope["diff_ci"][1], ope
    last = loop["reward_curve"][-1]
    assert last["reward"] > loop["uniform_reward"] + 0.15, loop["reward_curve"]
    assert loop["rewards_joined"] > 0.9 * loop["decisions_served"] - 100
    assert "promoted over v" in run["out"]


def test_the_report_plots_the_reward_against_the_uniform_policy(run):
    html = (run["dir"] / "report.html").read_text()
    assert "decisions_decision_reward.png" in html and (run["dir"] / "decisions_decision_reward.png").stat().st_size > 0
