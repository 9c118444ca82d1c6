import subprocess
import sys
from pathlib import Path

import pytest
import yaml

from cluster.validate import validate_cluster_file

REPO = Path(__file__).resolve().parents[2]


def _variant(tmp_path, mutate):
    config = yaml.safe_load((REPO / "ray_cluster.yaml").read_text())
    mutate(config)
    path = tmp_path / "cluster.yaml"
    path.write_text(yaml.safe_dump(config))
    return path


def test_shipped_cluster_file_is_valid():
    report = validate_cluster_file(REPO / "ray_cluster.yaml")
    assert report.ok, report.problems
    assert "learners land on: gpu_worker" in report.notes


def test_misspelled_top_level_key_is_named(tmp_path):
    path = _variant(tmp_path, lambda c: c.__setitem__("max_worker", c.pop("max_workers")))
    report = validate_cluster_file(path)
    assert not report.ok
    assert any("max_worker" in p for p in report.problems)


def test_fractional_gpu_is_named(tmp_path):
    path = _variant(tmp_path, lambda c: c["available_node_types"]["gpu_worker"]["resources"].__setitem__("GPU", 0.5))
    report = validate_cluster_file(path)
    assert any("'GPU'" in p and "0.5" in p for p in report.problems)


def test_missing_learner_resource(tmp_path):
    path = _variant(tmp_path, lambda c: c["available_node_types"]["gpu_worker"]["resources"].pop("learner"))
    assert any("'learner'" in p for p in validate_cluster_file(path).problems)


def test_unknown_head_type(tmp_path):
    path = _variant(tmp_path, lambda c: c.__setitem__("head_node_type", "boss"))
    assert any("head_node_type" in p and "boss" in p for p in validate_cluster_file(path).problems)


def test_public_dashboard_and_auth_off(tmp_path):
    def mutate(c):
        c["head_start_ray_commands"] = ["ray stop", "ray start --head --dashboard-host=0.0.0.0"]

    problems = validate_cluster_file(_variant(tmp_path, mutate)).problems
    assert any("public interface" in p for p in problems)
    assert any("token auth is off" in p for p in problems)


@pytest.mark.parametrize("content, reason", [("a: [1\n", "not valid YAML"), ("- 1\n", "mapping")])
def test_unreadable_files(tmp_path, content, reason):
    path = tmp_path / "c.yaml"
    path.write_text(content)
    assert any(reason in p for p in validate_cluster_file(path).problems)
    assert validate_cluster_file(tmp_path / "missing.yaml").problems == ["no such file"]


def test_cli_exit_codes(tmp_path):
    bad = _variant(tmp_path, lambda c: c.__setitem__("max_worker", c.pop("max_workers")))
    ok = subprocess.run([sys.executable, "-m", "cluster.cli", "cluster", "validate", str(REPO / "ray_cluster.yaml")],
                        capture_output=True, text=True, cwd=REPO)
    assert ok.returncode == 0, ok.stderr
    res = subprocess.run([sys.executable, "-m", "cluster.cli", "cluster", "validate", str(bad)],
                         capture_output=True, text=True, cwd=REPO)
    assert res.returncode == 1
    assert "max_worker" in res.stderr and "Traceback" not in res.stderr
