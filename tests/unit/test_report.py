"""`evolve report` on a synthetic events.jsonl: which figures, what they are drawn from, one self-contained page."""

import base64
import json
import re

import pytest

from cluster import report_data as data
from cluster.cli import main
from cluster.errors import UserError
from cluster.report import write_report

T0 = 1_000.0


def _events():
    ev = [{"time": T0, "loop": "run", "event": "started"}]
    # a live feedback loop: v1, a promotion, a refusal, a rollback, an alarm and an adaptation
    ev += [{"time": T0 + 1, "loop": "sentiment", "event": e, "decision": "initial", "version": 1,
            "heldout_accuracy": 0.5, "events": None} for e in ("gate_decision", "bootstrap")]  # one decision, twice
    for i in range(1, 9):
        ev.append({"time": T0 + 5 * i, "loop": "sentiment", "event": "progress", "feedback": 40 * i,
                   "heldout_acc": 0.5 + 0.03 * i, "online_acc": 0.6, "version": 1 + i // 3})
        ev.append({"time": T0 + 5 * i, "loop": "sentiment", "event": "learner", "step": 50 * i, "loss": 1.0 / i})
    ev += [
        {"time": T0 + 12, "loop": "sentiment", "event": "gate_decision", "decision": "promote", "version": 2,
         "heldout_accuracy": 0.62, "events": 100},
        {"time": T0 + 18, "loop": "sentiment", "event": "gate_decision", "decision": "refuse", "version": 3,
         "heldout_accuracy": 0.55, "events": 150},
        {"time": T0 + 20, "loop": "sentiment", "event": "adapt", "signal": "correct", "action": None},
        {"time": T0 + 21, "loop": "sentiment", "event": "adapt", "signal": "correct", "action": ["boost_lr"]},
        {"time": T0 + 30, "loop": "sentiment", "event": "rollback", "from": 4, "to": 2, "heldout_accuracy": 0.62,
         "events": 250},
    ]
    # an RL loop: env steps on the progress lines, evaluations between them
    for i in range(1, 6):
        ev.append({"time": T0 + 10 * i, "loop": "cartpole", "event": "progress", "env_steps": 1000 * i})
        ev.append({"time": T0 + 10 * i + 5, "loop": "cartpole", "event": "eval", "version": i, "eval_return": 20.0 * i})
    # an MLM loop with held-out masked accuracy
    ev += [{"time": T0 + 10 * i, "loop": "mlm", "event": "learner_eval", "step": 100 * i, "masked_accuracy": 0.1 * i}
           for i in range(1, 4)]
    ev += [{"time": T0 + 5 * i, "loop": "replay", "event": "progress",
            "tables": {"transitions": {"size": 100 * i, "inserts_per_s": 20.0, "samples_per_s": 300.0}}}
           for i in range(1, 6)]
    ev += [{"time": T0 + i, "loop": "publisher", "event": "publish", "policy_id": "cartpole", "version": i,
            "latency_s": 0.1 * i} for i in range(1, 8)]
    return ev


@pytest.fixture
def run_dir(tmp_path):
    path = tmp_path / "run"
    path.mkdir()
    lines = [json.dumps(e) for e in _events()]
    # a run still going: the last line torn mid-write
    (path / "events.jsonl").write_text("\n".join(lines) + '\n{"time": 1, "loop": "sent')
    return path


EXPECTED = {"sentiment_heldout", "sentiment_learner", "sentiment_timeline", "cartpole_eval_return",
            "cartpole_timeline", "mlm_masked_accuracy", "publish_latency", "replay"}


def test_report_draws_each_figure_the_events_have_and_no_other(run_dir, tmp_path):
    report = write_report(run_dir, tmp_path / "out")
    assert {p.stem for p in report.pngs} == EXPECTED
    assert not report.finished
    for png in report.pngs:
        assert png.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n" and png.stat().st_size > 5_000
    page = report.html.read_text()
    inlined = re.findall(r'src="data:image/png;base64,([A-Za-z0-9+/=]+)"', page)
    assert len(inlined) == len(EXPECTED)
    assert {base64.b64decode(s) for s in inlined} == {p.read_bytes() for p in report.pngs}
    assert "still going" in page and "<title>Evolve run report" in page
    assert "http://" not in page and "https://" not in page  # nothing fetched: it opens offline


def test_the_run_dir_is_the_default_out_and_the_cli_writes_there(run_dir, capsys):
    assert main(["report", str(run_dir)]) == 0
    assert (run_dir / "report.html").is_file() and (run_dir / "replay.png").is_file()
    assert "report.html" in capsys.readouterr().out


def test_not_a_run_dir_is_refused(tmp_path):
    with pytest.raises(UserError, match="no events.jsonl"):
        write_report(tmp_path)


def test_heldout_marks_gate_outcomes_at_their_feedback_count():
    by = data.by_loop(_events())
    curve, marks = data.heldout_vs_feedback(by["sentiment"])
    assert curve.x == [40.0 * i for i in range(1, 9)]
    assert [p[:2] for p in marks.points["promoted"]] == [(0, 0.5), (100, 0.62)]
    assert [p[:2] for p in marks.points["refused"]] == [(150, 0.55)]
    assert marks.points["rollback"] == [(250, 0.62, "v4->v2")]


def test_eval_return_sits_at_the_env_steps_of_its_time():
    curve, labels = data.eval_vs_env_steps(data.by_loop(_events())["cartpole"])
    # evaluations at t0+15, +25, ...: halfway between progress lines 1000 apart; the last after the final line
    assert curve.x == [1500.0, 2500.0, 3500.0, 4500.0, 5000.0]
    assert [text for _, _, text in labels] == ["v1", "v2", "v3", "v4", "v5"]


def test_updates_per_s_is_the_step_slope():
    series = data.learner_series(data.by_loop(_events())["sentiment"], T0)
    assert series["updates_per_s"].y == [pytest.approx(10.0)] * 7  # 50 steps every 5 s


def test_timeline_separates_alarms_from_adaptations():
    curves, marks = data.timeline(data.by_loop(_events())["sentiment"], T0)
    assert set(curves) == {"held-out accuracy", "online accuracy (first sight)"}
    assert [p[0] for p in marks.points["alarm"]] == [20.0]
    assert marks.points["adaptation"] == [(21.0, None, "correct: boost_lr")]


def test_a_loop_gets_the_figures_its_kind_declares(run_dir):
    """config.yaml names each loop's kind: only that kind's figures are drawn for it (an RL loop
    named `sentiment` gets no held-out figure, even from events that would draw one)."""
    (run_dir / "config.yaml").write_text("loops:\n  sentiment: {kind: rl}\n  cartpole: {kind: rl}\n  mlm: {kind: mlm}\n")
    names = {p.name for p in write_report(run_dir).pngs}
    assert "sentiment_heldout.png" not in names and "sentiment_timeline.png" in names
    assert {"cartpole_eval_return.png", "mlm_masked_accuracy.png"} <= names


def test_a_run_still_going_shows_its_newest_continual_figures(tmp_path):
    path = tmp_path / "run"
    path.mkdir()
    ev = [{"time": T0, "loop": "run", "event": "started"},
          {"time": T0 + 5, "loop": "sentiment", "event": "continual", "ACC": 0.71, "BWT": None, "seen": 1},
          {"time": T0 + 9, "loop": "sentiment", "event": "continual", "ACC": 0.83, "BWT": -0.041, "seen": 2,
           "stability_gap": 0.125, "worst_group": "hotel"}]
    (path / "events.jsonl").write_text("\n".join(json.dumps(e) for e in ev) + "\n")
    page = write_report(path).html.read_text()
    table = page[page.index("continual learning: sentiment"):]
    assert "<th>ACC</th><td>0.83</td>" in table and "<th>BWT</th><td>-0.041</td>" in table
    assert "<th>stability_gap</th><td>0.125</td>" in table and "hotel" in table and "0.71" not in table
