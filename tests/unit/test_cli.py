import subprocess
import sys
from pathlib import Path

import pytest

from cluster.cli import build_parser, main

REPO = Path(__file__).resolve().parents[2]


@pytest.mark.parametrize("argv", [[], ["run"], ["status"], ["cluster"], ["cluster", "validate"], ["rollback"]])
def test_help_on_every_command(argv, capsys):
    with pytest.raises(SystemExit) as info:
        build_parser().parse_args([*argv, "--help"])
    assert info.value.code == 0
    assert "usage: evolve" in capsys.readouterr().out


def test_run_flags_parse():
    args = build_parser().parse_args(
        ["run", "configs/default.yaml", "--budget-s", "60", "--address", "auto", "--run-dir", "/tmp/r",
         "--set", "loops.cartpole.learning.lr=1e-4", "--set", "run.seed=3"]
    )
    assert args.budget_s == 60 and args.address == "auto" and args.run_dir == "/tmp/r"
    assert args.overrides == ["loops.cartpole.learning.lr=1e-4", "run.seed=3"]


@pytest.mark.parametrize("bad", ["0", "-5", "soon"])
def test_budget_must_be_positive(bad):
    with pytest.raises(SystemExit) as info:
        build_parser().parse_args(["run", "c.yaml", "--budget-s", bad])
    assert info.value.code == 2


def test_config_error_is_one_line_without_traceback():
    res = subprocess.run(
        [sys.executable, "-m", "cluster.cli", "run", "configs/default.yaml", "--set", "nonexistent.key=1"],
        capture_output=True, text=True, cwd=REPO, timeout=120,
    )
    assert res.returncode == 2
    lines = res.stderr.strip().splitlines()
    assert len(lines) == 1, res.stderr
    assert "nonexistent" in lines[0] and "unknown key" in lines[0]
    assert "Traceback" not in res.stderr


def test_missing_config_file(capsys):
    assert main(["run", "configs/does-not-exist.yaml"]) == 2
    assert "no such config file" in capsys.readouterr().err


def test_status_without_a_cluster_is_a_clear_error(tmp_path):
    # an address nothing listens on: one line, exit 1, no traceback
    res = subprocess.run(
        [sys.executable, "-m", "cluster.cli", "status", "--address", "127.0.0.1:1"],
        capture_output=True, text=True, cwd=REPO, timeout=60,
    )
    assert res.returncode == 1, res.stderr
    assert "Traceback" not in res.stderr
    assert "nothing answers at" in res.stderr and ":1 " in res.stderr


def _two_live_versions(tmp_path):
    import numpy as np

    from core.storage.registry import PolicyRegistry

    reg = PolicyRegistry(tmp_path / "registry")
    for _ in range(2):
        v = reg.publish("sentiment", {"w": np.ones(3, dtype=np.float32)})
        reg.promote("sentiment", v)
    return reg


def test_rollback_moves_the_live_pointer_of_a_run_dir(tmp_path, capsys):
    reg = _two_live_versions(tmp_path)
    assert main(["rollback", "sentiment", "--run-dir", str(tmp_path)]) == 0
    assert reg.latest("sentiment", "live").version == 1
    assert "v2 -> v1" in capsys.readouterr().out
    assert reg.get("sentiment", 2).info["rolled_back"]["to"] == 1  # the version it left is marked
    assert main(["rollback", "sentiment", "--registry", str(tmp_path / "registry"), "--to", "2"]) == 0
    assert reg.latest("sentiment", "live").version == 2 and "rolled_back" not in reg.get("sentiment", 2).info


@pytest.mark.parametrize("argv, message", [
    (["--to", "7"], "7"),  # no such version
    (["--to", "2"], "already live"),
    ([], None),
])
def test_rollback_refusals_are_one_line(tmp_path, capsys, argv, message):
    _two_live_versions(tmp_path)
    where = [] if message is None else ["--run-dir", str(tmp_path)]
    assert main(["rollback", "sentiment", *where, *argv]) == 1
    err = capsys.readouterr().err.strip()
    assert err.startswith("evolve: error:") and "\n" not in err
    assert (message or "--address auto") in err
