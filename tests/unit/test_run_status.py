"""The live status `evolve status` prints, folded from event records; the progress lines' width."""

import os
import subprocess
import sys
import textwrap

from cluster.progress_lines import WIDTH, progress_lines
from cluster.run_status import ALARM_OPEN_S, RunStatus, format_table


class Clock:
    def __init__(self, t=100.0):
        self.t = t

    def __call__(self):
        return self.t


def _fold(records, clock):
    status = RunStatus("default", "/runs/default", clock=clock)
    for rec in records:
        status.observe(rec)
    return status


def test_rows_carry_version_figure_rates_last_gate_alarms_and_replay():
    clock = Clock(130.0)
    status = _fold([
        {"time": 100.0, "loop": "sentiment", "event": "progress", "version": 1, "heldout_acc": 0.5, "feedback": 0},
        {"time": 105.0, "loop": "sentiment", "event": "gate_decision", "decision": "promote", "version": 2},
        {"time": 106.0, "loop": "sentiment", "event": "adapt", "signal": "correct", "action": None},
        {"time": 107.0, "loop": "sentiment", "event": "adapt", "signal": "correct", "action": ["boost_lr"]},
        {"time": 110.0, "loop": "sentiment", "event": "progress", "version": 2, "heldout_acc": 0.6, "feedback": 50},
        {"time": 100.0, "loop": "cartpole", "event": "progress", "version": 3, "eval_return": 40.0, "env_steps": 1000},
        {"time": 120.0, "loop": "cartpole", "event": "progress", "version": 4, "eval_return": 90.0, "env_steps": 9000},
        {"time": 120.0, "loop": "replay", "event": "progress", "tables": {"transitions": {"size": 9000}}},
    ], clock)
    snap = status.snapshot()
    fb, rl = snap["loops"]["sentiment"], snap["loops"]["cartpole"]
    assert (fb["version"], fb["heldout_acc"], fb["feedback_per_s"]) == (2, 0.6, 5.0)
    assert fb["last_gate"] == "promote v2" and fb["open_alarms"] == ["correct"]  # the action is no alarm
    assert (rl["version"], rl["eval_return"], rl["env_steps_per_s"], rl["feedback_per_s"]) == (4, 90.0, 400.0, None)
    assert snap["replay"] == {"transitions": 9000}
    lines = format_table([snap], now=clock())
    assert len(lines) == 4 and "sentiment" in lines[2] and "promote v2" in lines[2] and "correct" in lines[2]
    assert lines[0].startswith("run default: ") and "transitions=9000" in lines[0]

    clock.t = 106.0 + ALARM_OPEN_S + 1
    assert status.snapshot()["loops"]["sentiment"]["open_alarms"] == []


def test_a_rollback_is_the_last_gate_decision():
    status = _fold([{"time": 1.0, "loop": "s", "event": "rollback", "from": 5, "to": 3}], Clock())
    assert status.snapshot()["loops"]["s"]["last_gate"] == "rollback v5->v3"


def test_each_loop_gets_one_line_of_at_most_100_columns():
    usage = {"total": {"CPU": 4.0}, "available": {"CPU": 1.5}}
    figures = {
        "sentiment": {"predicts": 123456, "feedback": 98765, "online_acc": 0.71234, "heldout_acc": 0.61234,
                      "version": 12, "promoted": 11, "refused": 3, "adapt": 2, "updates": 40000, "loss": 0.4123},
        "cartpole": {"env_steps": 1234567, "episodes": 23456, "train_return": None, "steps_per_s": 812,
                     "updates": 29000, "loss": 0.9, "eval_return": 143.2, "version": 9, "gate": {"canary": "v9"}},
    }
    lines = progress_lines(65.0, 120, usage, figures, {"transitions": 5120, "feedback": 230})
    assert len(lines) == 3 and all(len(line) <= WIDTH for line in lines)
    assert lines[0].startswith("[  65.0s/120s] CPU 2.5/4 used | replay transitions=5120")
    assert lines[1].split()[:3] == ["sentiment", "v=12", "acc=0.6123"]  # what a reader looks for, first
    assert "train_ret" not in lines[2]  # no empty values



def test_a_loops_row_and_line_follow_what_its_kind_declares():
    """Two loops of one kind under any names read that kind's declarations (core/config/kinds.py)."""
    kinds = {"reviews": "feedback", "pairs": "feedback", "lander": "rl", "encoder": "mlm"}
    status = RunStatus("r", "/runs/r", clock=Clock(120.0), kinds=kinds)
    for t, n in ((100.0, 0), (110.0, 40)):
        for loop in ("reviews", "pairs"):
            status.observe({"time": t, "loop": loop, "event": "progress", "version": 1, "heldout_acc": 0.5,
                            "feedback": n, "env_steps": 7, "eval_return": 3.0})
    status.observe({"time": 110.0, "loop": "encoder", "event": "progress", "step": 30, "heldout_acc": 0.2, "loss": 2.5})
    rows = status.snapshot()["loops"]
    assert rows["pairs"]["feedback_per_s"] == 4.0 and "env_steps_per_s" not in rows["pairs"]
    assert "eval_return" not in rows["reviews"]  # a figure its kind does not declare stays off its row
    assert (rows["encoder"]["updates"], rows["encoder"]["heldout_acc"]) == (30, 0.2)  # mlm counts steps
    usage = {"total": {"CPU": 4.0}, "available": {"CPU": 1.5}}
    lines = progress_lines(5.0, None, usage, {
        "lander": {"env_steps": 9, "steps_per_add": 64, "eval_return": 1.5, "version": 2},
        "pairs": {"predicts": 3, "heldout_acc": 0.4, "version": 2},
    }, kinds=kinds)
    assert lines[1].split()[:4] == ["lander", "v=2", "ret=1.5", "steps=9"] and "steps_per_add" not in lines[1]
    assert lines[2].split()[:4] == ["pairs", "v=2", "acc=0.4", "pred=3"]

def test_ray_lines_on_fd2_go_to_the_run_dir_and_evolve_warnings_to_the_terminal(tmp_path):
    """A child process with a real stderr: what C++ and Ray's loggers write to fd 2 lands in
    ray-driver.log; `print(..., file=sys.stderr)` still reaches the terminal."""
    script = textwrap.dedent(f"""
        import logging, os, sys
        handler_stream = sys.stderr              # as Ray's logger holds it, opened before the run
        from cluster.quiet import RayLogs
        with RayLogs({str(tmp_path)!r}):
            os.write(2, b"core_worker.cc: constructor arguments in the object store\\n")
            handler_stream.write("(TrainController) Requesting resources\\n"); handler_stream.flush()
            print("evolve: warning: needs you", file=sys.stderr)
        print("evolve: after the run", file=sys.stderr)
    """)
    env = {**os.environ, "PYTHONPATH": os.getcwd()}
    out = subprocess.run([sys.executable, "-c", script], capture_output=True, text=True, env=env, timeout=60)
    assert out.returncode == 0, out.stderr
    assert out.stderr.splitlines() == ["evolve: warning: needs you", "evolve: after the run"]
    log = (tmp_path / "ray-driver.log").read_text()
    assert "core_worker.cc" in log and "Requesting resources" in log and "needs you" not in log


def test_every_figure_of_a_snapshot_becomes_a_documented_gauge():
    from cluster.run_status import METRICS, REPLAY_METRIC, metric_values

    status = _fold([
        {"time": 1.0, "loop": "s", "event": "progress", "version": 2, "heldout_acc": 0.6, "feedback": 0,
         "updates": 50, "loss": 0.5},
        {"time": 11.0, "loop": "s", "event": "progress", "version": 2, "heldout_acc": 0.6, "feedback": 30,
         "updates": 90, "loss": 0.4},
        {"time": 11.0, "loop": "s", "event": "adapt", "signal": "correct", "action": None},
        {"time": 11.0, "loop": "replay", "event": "progress", "tables": {"feedback": {"size": 30}}},
    ], Clock(12.0))
    values = {(name, tags.get("loop") or tags.get("table")): v for name, v, tags in metric_values(status.snapshot())}
    assert values[("evolve_loop_feedback_rate", "s")] == 3.0
    assert values[("evolve_loop_open_alarms", "s")] == 1.0
    assert values[("evolve_loop_learner_loss", "s")] == 0.4
    assert values[(REPLAY_METRIC[0], "feedback")] == 30.0
    assert ("evolve_loop_eval_return", "s") not in values and ("evolve_loop_env_step_rate", "s") not in values
    assert all("(" in description and description.endswith(")") for _, description in METRICS.values())  # units
