import json
from pathlib import Path

import pytest

from core.config.evolve import EvolveConfig
from core.config.keys import config_keys
from core.config.kinds import KINDS
from core.config.loader import ConfigError, apply_overrides, dump_config, load_config, parse_override, validate

REPO = Path(__file__).resolve().parents[2]
DEFAULT = REPO / "configs/default.yaml"


@pytest.mark.parametrize("preset", sorted((REPO / "configs").glob("*.yaml")), ids=lambda p: p.name)
def test_every_preset_loads(preset):
    assert isinstance(load_config(preset), EvolveConfig)


def test_cluster_preset_runs_the_default_loops_with_gpu_learners():
    default, cluster = load_config(DEFAULT), load_config(REPO / "configs/cluster.yaml")
    assert list(default.loops) == ["sentiment_mlm", "sentiment", "cartpole"]
    assert list(cluster.loops) == ["sentiment", "cartpole"]  # no pretraining beside the classifier there
    assert cluster.cluster.address == "auto" and cluster.serving.host == "0.0.0.0"
    assert cluster.learner.use_gpu and cluster.learner.resources_per_worker == {"learner": 1}
    # what the loops learn is the default's; only placement and scale differ (and the gate judges
    # on the whole held-out set, which make run halves for a laptop)
    fb, dfb = cluster.loops["sentiment"], default.loops["sentiment"]
    assert fb.model_copy(update={"serving": dfb.serving, "data": dfb.data, "model": dfb.model}) == dfb
    assert fb.model == dfb.model.model_copy(update={"encoder_loop": None}) and fb.serving.num_replicas == 2
    assert (fb.data.max_heldout, dfb.data.max_heldout) == (1000, 500)
    assert cluster.replay == default.replay
    assert cluster.run.storage.startswith("s3://") and cluster.cluster.actor_resources == {"actors": 0.01}
    rl, drl = cluster.loops["cartpole"], default.loops["cartpole"]
    assert rl.model_copy(update={"acting": drl.acting, "start_after": drl.start_after}) == drl
    assert rl.acting.num_actors == 4 and rl.start_after == [] and drl.start_after == ["sentiment"]


# ---- loops as named instances of a kind ---------------------------------------------------------


def test_a_loop_is_named_and_takes_its_policy_id_and_tables_from_its_name():
    cfg = load_config(DEFAULT)
    fb, rl = cfg.loops["sentiment"], cfg.loops["cartpole"]
    assert (fb.kind, fb.policy_id, fb.tables) == ("feedback", "sentiment", {"feedback": "sentiment", "text": "sentiment-text"})
    assert (rl.kind, rl.policy_id, rl.tables) == ("rl", "cartpole", {"transitions": "cartpole"})
    assert {name: t.kind for name, t in cfg.replay.tables.items()} == {
        "sentiment": "feedback", "sentiment-text": "text", "cartpole": "transitions"}


def test_two_loops_of_each_kind_run_side_by_side_with_their_own_names():
    cfg = load_config(REPO / "configs/two_of_each.yaml")
    kinds = [loop.kind for loop in cfg.loops.values()]
    assert kinds.count("feedback") == 2 and kinds.count("rl") == 2
    policy_ids = [loop.policy_id for loop in cfg.loops.values()]
    routes = [r for loop in cfg.loops.values() for r in loop.routes()]
    tables = [t for loop in cfg.loops.values() for t in loop.tables.values() if t]
    for names in (policy_ids, routes, tables):
        assert len(set(names)) == len(names), names
    envs = {loop.env_id for loop in cfg.loops_of("rl").values()}
    data = {loop.data.builtin for loop in cfg.loops_of("feedback").values()}
    assert len(envs) == 2 and len(data) == 2  # different envs, different data


@pytest.mark.parametrize(
    "overrides, fragment",
    [
        (["loops.second={kind: rl, policy_id: cartpole}"],
         "loops 'cartpole' and 'second' both use policy id 'cartpole': give one its own (loops.second.policy_id)"),
        (["loops.second={kind: rl, tables: {transitions: cartpole}}"],
         "loops 'cartpole' and 'second' both use table 'cartpole': give one its own (loops.second.tables.transitions)"),
        (["loops.other={kind: feedback}"],
         "loops 'sentiment' and 'other' both use route '/v1': give one its own (loops.other.serving.route_prefix)"),
        (["loops.cartpole.policy_id=sentiment"], "loops 'sentiment' and 'cartpole' both use policy id 'sentiment'"),
    ],
)
def test_a_clash_between_two_loops_is_refused_naming_both(overrides, fragment):
    with pytest.raises(ConfigError) as info:
        load_config(DEFAULT, overrides)
    assert fragment in str(info.value) and "\n" not in str(info.value)


def test_the_same_loop_twice_under_two_names_needs_only_a_route_of_its_own():
    cfg = load_config(DEFAULT, ["loops.other={kind: feedback, serving: {route_prefix: /v1/other}}"])
    assert cfg.loops["other"].policy_id == "other" and cfg.loops["other"].tables["feedback"] == "other"


@pytest.mark.parametrize("name", ["run", "replay", "publisher", "evolve", "has space"])
def test_a_loop_may_not_take_a_name_the_run_uses(name):
    with pytest.raises(ConfigError, match="cannot name a loop"):
        validate({"loops": {name: {"kind": "rl"}}}, "test")


def test_a_loop_without_a_known_kind_is_refused_naming_the_kinds():
    with pytest.raises(ConfigError, match=r"loops.x: each loop needs `kind:`, one of feedback, rl, mlm, clm, generate, decisions, novelty"):
        load_config(DEFAULT, ["loops.x={env_id: CartPole-v1}"])


def test_the_novelty_loop_watches_a_feedback_loop_listed_before_it():
    cfg = load_config(REPO / "configs/drift_text.yaml")
    assert list(cfg.loops) == ["sentiment", "novelty"] and cfg.loops["novelty"].watch == "sentiment"
    assert cfg.loops["novelty"].published(cfg.loops) == ["sentiment-novelty"]
    with pytest.raises(ConfigError, match="must name a feedback loop of this run"):
        load_config(REPO / "configs/drift_text.yaml", ["loops.novelty.watch=other"])
    with pytest.raises(ConfigError, match="list 'sentiment' before it"):
        validate({"loops": {"novelty": {"kind": "novelty", "watch": "sentiment"}, "sentiment": {"kind": "feedback"}}},
                 "test")
    with pytest.raises(ConfigError, match="logs none"):
        load_config(REPO / "configs/drift_text.yaml", ["loops.sentiment.tables.text=null"])


def test_client_episodes_need_serving():
    assert load_config(REPO / "configs/drift_cartpole.yaml").loops["cartpole"].experience == "rollouts"
    with pytest.raises(ConfigError, match="experience 'both' needs serving.enabled: true"):
        load_config(REPO / "configs/cartpole.yaml", ["serving.enabled=false"])


@pytest.mark.parametrize("old", [
    "loops: [feedback, rl]\nfeedback: {name: reviews, lr: 0.001}\nrl: {env_id: CartPole-v1}\n",
    "rl: {env_id: CartPole-v1}\n",
])
def test_an_old_config_is_refused_in_one_line_that_shows_the_new_shape(tmp_path, old):
    path = tmp_path / "old.yaml"
    path.write_text(old)
    with pytest.raises(ConfigError) as info:
        load_config(path)
    msg = str(info.value)
    assert "\n" not in msg and msg.startswith(f"{path}: loops: ")
    assert "cartpole: {kind: rl, ...}" in msg
    if "feedback" in old:
        assert "loops: {reviews: {kind: feedback, ...}, cartpole: {kind: rl, ...}}" in msg  # the old name, kept


def test_an_old_loops_list_given_on_the_command_line_is_refused_too():
    with pytest.raises(ConfigError, match="the loops are named now"):
        load_config(DEFAULT, ["loops=[rl]"])


# ---- presets: base and deep merge --------------------------------------------------------------


def test_a_preset_merges_its_bases_in_order_then_its_own_keys(tmp_path):
    (tmp_path / "a.yaml").write_text("run: {name: a, seed: 1}\nloops: {one: {kind: rl, env_id: Acrobot-v1}}\n")
    (tmp_path / "b.yaml").write_text("run: {name: b}\nloops: {two: {kind: rl, learning: {lr: 0.01}}}\n")
    (tmp_path / "c.yaml").write_text("base: [a, b.yaml]\nrun: {budget_s: 5}\nloops: {two: {learning: {n_step: 3}}}\n")
    cfg = load_config(tmp_path / "c.yaml")
    assert (cfg.run.name, cfg.run.seed, cfg.run.budget_s) == ("b", 1, 5.0)  # later bases win, mappings merge
    assert list(cfg.loops) == ["one", "two"] and cfg.loops["one"].env_id == "Acrobot-v1"
    assert (cfg.loops["two"].learning.lr, cfg.loops["two"].learning.n_step) == (0.01, 3)


def test_a_loop_or_table_set_to_null_leaves_out_what_the_base_declares(tmp_path):
    (tmp_path / "p.yaml").write_text(f"base: {DEFAULT}\nloops: {{cartpole: null}}\nreplay: {{tables: {{cartpole: null}}}}\n")
    cfg = load_config(tmp_path / "p.yaml")
    assert list(cfg.loops) == ["sentiment_mlm", "sentiment"] and "cartpole" not in cfg.replay.tables
    assert load_config(DEFAULT, ["loops.cartpole=null"]).loops.keys() == {"sentiment_mlm", "sentiment"}


@pytest.mark.parametrize("text, fragment", [
    ("base: nowhere\n", "base: no such preset 'nowhere'"),
    ("base: self\n", "names a preset that is its own base"),
    ("base: {a: 1}\n", "base: must name a preset or a list of presets"),
])
def test_a_bad_base_is_one_line_naming_the_file(tmp_path, text, fragment):
    path = tmp_path / "self.yaml"
    path.write_text(text)
    with pytest.raises(ConfigError) as info:
        load_config(path)
    assert str(info.value).startswith(str(path)) and fragment in str(info.value)


def test_a_preset_that_names_its_bases_resolves_like_the_keys_written_out():
    default = load_config(DEFAULT)
    written_out = load_config(REPO / "configs/sentiment.yaml", [
        "run.name=default", "run.budget_s=null", "cluster.num_cpus=4", "learner.cpus_per_worker=0.5",
        "replay.num_shards=2", "replay.shard_num_cpus=0.2", "serving.replica_num_cpus=0.05",
        "replay.tables.cartpole={min_size: 1000, samples_per_insert: 16, error_buffer: 20000}",
        "loops.cartpole=" + json.dumps(load_config(REPO / "configs/cartpole.yaml").loops["cartpole"].model_dump(mode="json")),
        "loops.cartpole.eval.stop_when_solved=false", "loops.sentiment.data.max_heldout=500",
        "loops.cartpole.start_after=[sentiment]"])
    assert written_out == default


# ---- keys, overrides, errors -----------------------------------------------------------------


def test_every_key_has_its_default_and_a_comment():
    keys = config_keys()
    assert not [k.key for k in keys if not k.comment]
    by_key = {k.key: k for k in keys}
    assert by_key["run.progress_interval_s"].default == "5.0"
    assert by_key["loops.<rl>.learning.lr"].default == "0.001" and "Adam" in by_key["loops.<rl>.learning.lr"].comment
    assert by_key["loops.<novelty>.watch"].default == "(required)"
    assert by_key["replay.tables.<name>.capacity"].default == "100000"
    for kind in KINDS:  # every kind's section, under its placeholder
        assert f"loops.<{kind}>.kind" in by_key
    # a section's defaults are its owner's: an RL loop's gate is made with other stages and sizes
    assert by_key["loops.<feedback>.gate.stages"].default == '["heldout"]'
    assert by_key["loops.<rl>.gate.stages"].default == "[]"
    assert by_key["loops.<rl>.gate.ope.size"].default == "100" != by_key["loops.<feedback>.gate.ope.size"].default


def test_defaults_without_a_file():
    cfg = load_config(None)
    assert cfg.cluster.address is None and cfg.loops == {}
    assert cfg.cluster.dashboard_host == "127.0.0.1"
    assert cfg.run.resolved_run_dir() == Path("runs/default")


def test_override_sets_nested_values_as_yaml():
    cfg = load_config(DEFAULT, ["loops.cartpole.learning.lr=1e-4", "learner.resources_per_worker={learner: 1}"])
    assert cfg.loops["cartpole"].learning.lr == pytest.approx(1e-4)
    assert cfg.learner.resources_per_worker == {"learner": 1}


@pytest.mark.parametrize("key", ["lr", "batch_size", "checkpoint_every"])
def test_a_moved_learner_key_names_its_new_place(key):
    with pytest.raises(ConfigError) as info:
        load_config(DEFAULT, [f"learner.{key}=1"])
    msg = str(info.value)
    assert msg.startswith(f"--set learner.{key}: learner.{key} moved: set loops.sentiment_mlm.{key} / "
                          f"loops.sentiment.learning.{key} / loops.cartpole.learning.{key}")
    assert "\n" not in msg


def test_unknown_key_in_file_names_file_key_and_reason(tmp_path):
    path = tmp_path / "c.yaml"
    path.write_text("learner:\n  num_worker: 1\n")
    with pytest.raises(ConfigError) as info:
        load_config(path)
    msg = str(info.value)
    assert str(path) in msg and "learner.num_worker" in msg and "unknown key" in msg
    assert "\n" not in msg
    assert "num_workers" in msg.split("known here:")[1]


def test_an_unknown_key_inside_a_loop_names_the_loop_and_its_kinds_keys():
    with pytest.raises(ConfigError) as info:
        load_config(DEFAULT, ["loops.sentiment.learning.lrr=1"])
    msg = str(info.value)
    assert msg.startswith("--set loops.sentiment.learning.lrr: loops.sentiment.learning.lrr: unknown key")
    assert "rehearsal" in msg.split("known here:")[1]


def test_unknown_override_key_names_the_override():
    with pytest.raises(ConfigError) as info:
        load_config(DEFAULT, ["nonexistent.key=1"])
    assert str(info.value).startswith("--set nonexistent.key: nonexistent: unknown key")


@pytest.mark.parametrize(
    "override, key",
    [
        ("loops.cartpole.learning.lr=-1", "loops.cartpole.learning.lr"),
        ("learner.num_workers=0", "learner.num_workers"),
        ("run.name=has space", "run.name"),
        ('run.name="trailing-newline\\n"', "run.name"),  # YAML's \n escape: a real newline
        ("serving.http_port=8265", ""),  # collides with the dashboard port
        ("learner.resources_per_worker={learner: -1}", "learner.resources_per_worker"),
        ("loops.sentiment.serving.route_prefix=v1/", "loops.sentiment.serving.route_prefix"),
    ],
)
def test_bad_values_fail_at_load(override, key):
    with pytest.raises(ConfigError) as info:
        load_config(DEFAULT, [override])
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
    cfg = load_config(DEFAULT, ["loops.cartpole.learning.lr=0.01"])
    out = tmp_path / "resolved.yaml"
    out.write_text(dump_config(cfg))
    assert load_config(out) == cfg


def test_a_loop_starts_after_the_loops_it_names_listed_before_it():
    cfg = load_config(DEFAULT)
    assert cfg.loops["cartpole"].starts_after() == ["sentiment"] and cfg.loops["sentiment"].starts_after() == []
    with pytest.raises(ConfigError, match="loops.sentiment.start_after: cartpole is not a loop listed before"):
        load_config(DEFAULT, ["loops.sentiment.start_after=[cartpole]"])
    with pytest.raises(ConfigError, match="start_after: nope is not a loop"):
        load_config(DEFAULT, ["loops.cartpole.start_after=[nope]"])
