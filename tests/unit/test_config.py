from pathlib import Path

import pytest

from core.config.evolve import EvolveConfig
from core.config.loader import ConfigError, apply_overrides, dump_config, load_config, parse_override

REPO = Path(__file__).resolve().parents[2]


@pytest.mark.parametrize("preset", sorted((REPO / "configs").glob("*.yaml")), ids=lambda p: p.name)
def test_every_preset_loads(preset):
    assert isinstance(load_config(preset), EvolveConfig)


def test_cluster_preset_runs_the_default_loops_with_gpu_learners():
    default, cluster = load_config(REPO / "configs/default.yaml"), load_config(REPO / "configs/cluster.yaml")
    assert cluster.loops == default.loops == ["feedback", "rl"]
    assert cluster.cluster.address == "auto" and cluster.serving.host == "0.0.0.0"
    assert cluster.learner.use_gpu and cluster.learner.resources_per_worker == {"learner": 1}
    # what the loops learn is the default's; only placement and scale differ
    assert cluster.feedback.model_copy(update={"num_replicas": default.feedback.num_replicas}) == default.feedback
    assert cluster.replay == default.replay
    assert cluster.run.storage.startswith("s3://") and cluster.cluster.actor_resources == {"actors": 0.01}
    assert cluster.rl.model_copy(update={"num_actors": default.rl.num_actors}) == default.rl


def test_the_novelty_loop_watches_a_feedback_loop_listed_before_it():
    assert load_config(REPO / "configs/drift_text.yaml").loops == ["feedback", "novelty"]
    with pytest.raises(ConfigError, match="list 'feedback' before it"):
        load_config(REPO / "configs/drift_text.yaml", ["loops=[novelty, feedback]"])
    with pytest.raises(ConfigError, match="novelty.policy_id 'other' must be feedback.policy_id"):
        load_config(REPO / "configs/drift_text.yaml", ["novelty.policy_id=other"])


def test_defaults_without_a_file():
    cfg = load_config(None)
    assert cfg.cluster.address is None
    assert cfg.cluster.dashboard_host == "127.0.0.1"
    assert cfg.run.resolved_run_dir() == Path("runs/default")


def test_override_sets_nested_values_as_yaml():
    cfg = load_config(REPO / "configs/default.yaml", ["rl.lr=1e-4", "learner.resources_per_worker={learner: 1}"])
    assert cfg.rl.lr == pytest.approx(1e-4)
    assert cfg.learner.resources_per_worker == {"learner": 1}


@pytest.mark.parametrize("key", ["lr", "batch_size", "checkpoint_every"])
def test_a_moved_learner_key_names_its_new_place(key):
    with pytest.raises(ConfigError) as info:
        load_config(REPO / "configs/default.yaml", [f"learner.{key}=1"])
    msg = str(info.value)
    assert msg.startswith(f"--set learner.{key}: learner.{key} moved: set feedback.{key} / rl.{key}")
    assert "\n" not in msg


def test_a_moved_key_in_a_file_names_the_file_and_every_loop_section(tmp_path):
    path = tmp_path / "old.yaml"
    path.write_text("learner:\n  lr: 0.01\n")
    with pytest.raises(ConfigError) as info:
        load_config(path)
    assert str(info.value) == (f"{path}: learner.lr moved: set rl.lr / feedback.lr / mlm.lr / novelty.lr "
                               "(each loop kind owns its learning settings)")


def test_unknown_key_in_file_names_file_key_and_reason(tmp_path):
    path = tmp_path / "c.yaml"
    path.write_text("learner:\n  num_worker: 1\n")
    with pytest.raises(ConfigError) as info:
        load_config(path)
    msg = str(info.value)
    assert str(path) in msg and "learner.num_worker" in msg and "unknown key" in msg
    assert "\n" not in msg
    assert "num_workers" in msg.split("known here:")[1]


def test_unknown_override_key_names_the_override():
    with pytest.raises(ConfigError) as info:
        load_config(REPO / "configs/default.yaml", ["nonexistent.key=1"])
    assert str(info.value).startswith("--set nonexistent.key: nonexistent: unknown key")


@pytest.mark.parametrize(
    "override, key",
    [
        ("rl.lr=-1", "rl.lr"),
        ("learner.num_workers=0", "learner.num_workers"),
        ("run.name=has space", "run.name"),
        ('run.name="trailing-newline\\n"', "run.name"),  # YAML's \n escape: a real newline
        ("serving.http_port=8265", ""),  # collides with the dashboard port
        ("learner.resources_per_worker={learner: -1}", "learner.resources_per_worker"),
    ],
)
def test_bad_values_fail_at_load(override, key):
    with pytest.raises(ConfigError) as info:
        load_config(REPO / "configs/default.yaml", [override])
    assert key in str(info.value)


def test_malformed_override():
    with pytest.raises(ConfigError, match="KEY=VALUE"):
        parse_override("learner.lr")
    with pytest.raises(ConfigError, match="is a value, not a section"):
        apply_overrides({"learner": {"lr": 1}}, ["learner.lr.x=2"])


def test_bad_yaml_and_missing_file(tmp_path):
    bad = tmp_path / "bad.yaml"
    bad.write_text("run: [unclosed\n")
    with pytest.raises(ConfigError, match="not valid YAML"):
        load_config(bad)
    with pytest.raises(ConfigError, match="no such config file"):
        load_config(tmp_path / "missing.yaml")
    listy = tmp_path / "list.yaml"
    listy.write_text("- 1\n")
    with pytest.raises(ConfigError, match="mapping"):
        load_config(listy)


def test_dump_round_trips(tmp_path):
    cfg = load_config(REPO / "configs/default.yaml", ["rl.lr=0.01"])
    out = tmp_path / "resolved.yaml"
    out.write_text(dump_config(cfg))
    assert load_config(out) == cfg
