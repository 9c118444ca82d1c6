"""The terminal's milestone lines: a promotion, a rollback, a goal reached, each with the run's clock;
every other event says nothing."""

from __future__ import annotations

from cluster.milestones import Milestones, milestone
from cluster.rundir import RunDir


def test_a_promotion_says_the_version_and_both_held_out_accuracies():
    line = milestone({"event": "gate_decision", "decision": "promote", "version": 2, "parent": 1,
                      "heldout_accuracy": 0.7123, "parent_heldout_accuracy": 0.65})
    assert line == "v2 promoted: held-out 0.712 (v1 0.650)"


def test_an_rl_promotion_without_a_held_out_set_says_why():
    line = milestone({"event": "gate_decision", "decision": "promote", "version": 5, "parent": 4,
                      "heldout_accuracy": None, "reason": "canary: no significant drop"})
    assert line == "v5 promoted over v4: canary: no significant drop"


def test_refusals_the_starting_version_and_progress_say_nothing():
    for record in ({"event": "gate_decision", "decision": "refuse", "version": 3},
                   {"event": "gate_decision", "decision": "initial", "version": 1},
                   {"event": "progress", "elapsed_s": 5}):
        assert milestone(record) is None


def test_a_rollback_and_a_solved_loop():
    assert milestone({"event": "rollback", "from": 4, "to": 3, "trigger": "prequential"}) == \
        "rolled back v4 -> v3 (prequential)"
    assert milestone({"event": "solved", "confirm_return": 487.2}) == "solved: confirmed greedy return 487.200"


def test_the_run_dir_listener_says_each_milestone_once_with_the_runs_clock(tmp_path):
    said: list[str] = []
    rd = RunDir(tmp_path / "run")
    rd.listeners.append(Milestones(said.append, started=1000.0, width=9))
    rd.event("sentiment", "gate_decision", decision="promote", version=2, parent=1, heldout_accuracy=0.7,
             parent_heldout_accuracy=0.6, time=1047.25)
    rd.event("sentiment", "gate_decision", decision="refuse", version=3, time=1050.0)
    rd.close()
    assert said == ["[  47.2s] sentiment v2 promoted: held-out 0.700 (v1 0.600)"]
