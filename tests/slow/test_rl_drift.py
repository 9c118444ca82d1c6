"""Drift on CartPole through the whole loop: `evolve run configs/drift_cartpole.yaml` as shipped.

The loop solves CartPole, keeps going for `loops.cartpole.drift.after_env_steps`, then the cart's push is
reversed on every env (rollout actors and evaluator).  With the adaptive layer on, the returns
detector alarms soon after the change and the replay table is cut; the run ends by itself once the
greedy evaluation on the changed env is back at 475 (three evaluations in a row).  A DQN that has
solved CartPole sometimes unlearns it before the change; the alarm that follows is checked against
the last confirmed version, which still balances, and counts as a regression, not as an alarm.  How much sooner
than without the adaptive layer is benchmarks/_adapt_rl.py's question (one run each way is too
noisy to assert on); this checks the wiring and that recovery happens within the budget.
"""

import pytest

from tests.slow.helpers import evolve_run, figure, timeout_for

pytestmark = pytest.mark.slow

BUDGET_S = 900


@pytest.mark.timeout(timeout_for(BUDGET_S))
def test_the_loop_detects_the_change_adapts_and_recovers(tmp_path):
    run = evolve_run("configs/drift_cartpole.yaml", tmp_path / "run", BUDGET_S)
    s = run.loop("cartpole")
    d = s["drift"]
    line = figure("drift_cartpole", solved_at=d["solved_at_env_steps"], at=d["at_env_steps"], alarms=d["alarms"],
                  regressions=d["regressions"], detection_delay=d["detection_delay_env_steps"], recovery=d["recovery_env_steps"],
                  worst_eval=d["worst_eval_return"], stopped_by=run.summary["run"]["stopped_by"])
    assert d["at_env_steps"] is not None, f"the physics never changed: {line}{run.tail()}"
    assert d["at_env_steps"] - d["solved_at_env_steps"] >= 30_000, line
    assert d["worst_eval_return"] is not None and d["worst_eval_return"] < 100, line  # the change broke it
    assert d["detection_delay_env_steps"] is not None and d["detection_delay_env_steps"] <= 5_000, line
    assert all(a >= d["at_env_steps"] for a in d["alarms"]), f"an alarm before the change: {line}"
    acted = [e for e in run.events("cartpole", "adapt") if e.get("action")]
    assert [e["action"] for e in acted][:1] == ["replay_cutoff"], line
    assert d["recovery_env_steps"] is not None, f"not recovered within {BUDGET_S} s: {line}{run.tail()}"
    assert run.summary["run"]["stopped_by"] == "loops_done", line
    assert len(run.events("cartpole", "env_drift")) == 1 and run.events("cartpole", "recovered"), line
