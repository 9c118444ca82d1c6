import json

from cluster.rundir import RunDir, read_events
from core.config.loader import load_config


def test_run_directory_files(tmp_path):
    rd = RunDir(tmp_path / "run")
    rd.write_config(load_config(None, ["run.seed=7"]))
    rd.event("cartpole", "progress", env_steps=10, loss=float("nan"))
    rd.event("run", "finished")
    rd.write_summary({"name": "x", "wall_s": 1.5}, {"cartpole": {"solved": False}})
    rd.close()
    assert load_config(tmp_path / "run" / "config.yaml").run.seed == 7
    events = read_events(rd.events_path)
    assert [e["loop"] for e in events] == ["cartpole", "run"]
    assert events[0]["loss"] is None and events[0]["env_steps"] == 10 and "time" in events[0]
    summary = json.loads((tmp_path / "run" / "summary.json").read_text())
    assert summary == {"run": {"name": "x", "wall_s": 1.5}, "loops": {"cartpole": {"solved": False}}}


def test_events_append_across_runs_and_survive_a_torn_line(tmp_path):
    rd = RunDir(tmp_path)
    rd.event("run", "started")
    rd.close()
    with open(tmp_path / "events.jsonl", "a") as fh:
        fh.write('{"torn":')  # a crash mid-write
    rd = RunDir(tmp_path)
    rd.event("run", "resumed")
    rd.close()
    assert [e["event"] for e in read_events(tmp_path / "events.jsonl")] == ["started", "resumed"]


def test_a_run_directory_it_creates_is_private(tmp_path):
    rd = RunDir(tmp_path / "runs" / "x")
    rd.write_config(load_config(None, []))
    rd.event("run", "started")
    rd.write_summary({"name": "x"}, {})
    rd.close()
    assert (tmp_path / "runs" / "x").stat().st_mode & 0o777 == 0o700
    for name in ("config.yaml", "events.jsonl", "summary.json"):
        assert (tmp_path / "runs" / "x" / name).stat().st_mode & 0o777 == 0o600, name
