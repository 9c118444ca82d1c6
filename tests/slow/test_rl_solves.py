"""The RL presets solve their environment through the whole loop within 600 s.

`evolve run configs/cartpole.yaml` (DQN) and `configs/taxi.yaml` (tabular Q-learning), as
shipped: rollout actors -> replay -> Ray Train learner -> publisher -> evaluator.  "Solved" is
the loop's own judgement: a published version's greedy evaluation reached `solve_return` (CartPole's
reward threshold 475; Taxi 7.5) and held it over `eval.confirm_episodes` (100) more greedy episodes.
Both presets stop by themselves once solved (`eval.stop_when_solved`), so a passing run ends early;
600 s is several times what they take on 2 cores (CartPole ~20-130 s of loop time in
benchmarks/README.md, Taxi within its preset's 300 s budget).
"""

import pytest

from tests.slow.helpers import evolve_run, figure, timeout_for

pytestmark = pytest.mark.slow

BUDGET_S = 600


def _assert_solved(run, name: str, solve_return: float) -> None:
    s = run.loop(name)
    line = figure(name, solved=s["solved"], time_to_solve_s=s["time_to_solve_s"],
                  env_steps_to_solve=s["env_steps_to_solve"], confirm_return=s["confirm_return"],
                  best_eval_return=s["best_eval_return"], eval_return=s["eval_return"], env_steps=s["env_steps"],
                  versions_published=s["versions_published"], stopped_by=run.summary["run"]["stopped_by"])
    assert s["solved"] is True, f"{name} not solved within {BUDGET_S} s: {line}{run.tail()}"
    assert s["solve_return"] == solve_return, line
    assert s["confirm_return"] >= solve_return, line  # held over the confirmation episodes
    assert 0 < s["time_to_solve_s"] <= BUDGET_S, line
    assert run.summary["run"]["stopped_by"] == "loops_done", line  # it stopped because it solved
    assert run.events(name, "solved"), f"no `solved` event for {name}: {line}"


@pytest.mark.timeout(timeout_for(BUDGET_S))
def test_cartpole_preset_solves(tmp_path):
    run = evolve_run("configs/cartpole.yaml", tmp_path / "run", BUDGET_S)
    _assert_solved(run, "cartpole", solve_return=475.0)


@pytest.mark.timeout(timeout_for(BUDGET_S))
def test_taxi_preset_solves(tmp_path):
    run = evolve_run("configs/taxi.yaml", tmp_path / "run", BUDGET_S)
    _assert_solved(run, "taxi", solve_return=7.5)
