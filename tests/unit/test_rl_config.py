"""The `rl` section without a cluster: presets, the rl.table check, bad values, epsilon, env specs."""

from __future__ import annotations

from pathlib import Path

import pytest

from core.config.loader import ConfigError, load_config
from core.config.rl import EpsilonSchedule, RLConfig
from core.models.q import PolicySpec, obs_width, spec_for_env

REPO = Path(__file__).resolve().parents[2]
CARTPOLE, TAXI, DEFAULT = REPO / "configs/cartpole.yaml", REPO / "configs/taxi.yaml", REPO / "configs/default.yaml"


# ---- presets ------------------------------------------------------------------------------


@pytest.mark.parametrize(
    "path, env_id, algo, n_actions",
    [(CARTPOLE, "CartPole-v1", "dqn", 2), (TAXI, "Taxi-v3", "qtable", 6)],
    ids=["cartpole", "taxi"],
)
def test_presets_load_as_rl_loops_whose_table_fits_the_env(path, env_id, algo, n_actions, tmp_path):
    cfg = load_config(path)
    assert cfg.loops == ["rl"]
    assert (cfg.rl.env_id, cfg.rl.algo) == (env_id, algo)
    table = cfg.replay.tables[cfg.rl.table]
    assert table.kind == "transitions" and table.obs_dim is None  # taken from the env
    _prepared(cfg, tmp_path)
    spec = spec_for_env(cfg.rl.env_id, cfg.rl.algo, cfg.rl.hidden)
    assert table.obs_dim == obs_width(spec)
    assert spec.n_actions == n_actions


def _prepared(cfg, tmp_path):
    """RLLoop.prepare() as `evolve run` calls it before Ray starts (no cluster here)."""
    from cluster.loop import RunContext
    from cluster.loops.rl import RLLoop
    from cluster.rundir import RunDir
    from core.storage.registry import PolicyRegistry

    loop = RLLoop(cfg, RunContext(cfg, RunDir(tmp_path / "run"), PolicyRegistry(tmp_path / "registry")))
    loop.prepare()
    return loop


def test_another_env_with_the_cartpole_preset_takes_its_obs_width_from_the_env(tmp_path):
    cfg = load_config(CARTPOLE, ["rl.env_id=MountainCar-v0"])
    loop = _prepared(cfg, tmp_path)
    assert cfg.replay.tables["transitions"].obs_dim == 2 and loop.spec.n_actions == 3
    assert loop.solve_return == -110.0


def test_an_obs_width_that_does_not_fit_the_env_is_refused_naming_the_key(tmp_path):
    from cluster.errors import UserError

    cfg = load_config(CARTPOLE, ["replay.tables.transitions.obs_dim=3"])
    with pytest.raises(UserError, match=r"replay.tables.transitions.obs_dim must be 4 for CartPole-v1 \(got 3"):
        _prepared(cfg, tmp_path)


def test_cartpole_preset_values_reach_the_section():
    rl = load_config(CARTPOLE).rl
    assert rl.n_step == 3 and rl.target_update_every == 100 and rl.hidden == [128, 128]
    assert rl.epsilon == EpsilonSchedule(start=1.0, end=0.02, decay_steps=375)
    assert rl.num_envs * rl.epsilon.decay_steps == 12_000  # env steps of exploration, whatever num_envs
    assert (rl.min_steps_per_write, rl.steps_per_write) == (64, 256)


def test_min_steps_per_write_above_the_maximum_is_refused():
    with pytest.raises(ConfigError, match="min_steps_per_write must be <= steps_per_write"):
        load_config(CARTPOLE, ["rl.min_steps_per_write=512"])


# ---- rl.table must be a declared transitions table ---------------------------------------


@pytest.mark.parametrize(
    "path, overrides, fragment",
    [
        (CARTPOLE, ["rl.table=nope"], "rl.table 'nope' must be a table declared under replay.tables"),
        # default.yaml keeps the built-in tables, so 'text' is declared but of the wrong kind
        (DEFAULT, ["loops=[rl]", "rl.table=text"], "rl.table 'text' must be of kind 'transitions', not 'text'"),
        (DEFAULT, ["loops=[rl]", "rl.table=feedback"], "must be of kind 'transitions', not 'feedback'"),
        (CARTPOLE, ["replay.enabled=false"], "rl.table 'transitions' must be a table declared"),
    ],
)
def test_rl_table_is_checked_when_the_rl_loop_runs(path, overrides, fragment):
    with pytest.raises(ConfigError) as info:
        load_config(path, overrides)
    assert fragment in str(info.value)
    assert "\n" not in str(info.value)  # one line, like every config error


def test_rl_table_is_not_checked_without_the_rl_loop():
    # An MLM-only run must not fail over an rl section it never uses.
    cfg = load_config(DEFAULT, ["loops=[]", "rl.table=text"])
    assert cfg.rl.table == "text"


@pytest.mark.parametrize(
    "override, fragment",
    [
        ("rl.gamma=0", "rl.gamma"),
        ("rl.gamma=1.5", "rl.gamma"),
        ("rl.n_step=0", "rl.n_step"),
        ("rl.n_step=21", "rl.n_step"),
        ("rl.algo=ppo", "rl.algo"),
        ("rl.num_envs=0", "rl.num_envs"),
        ("rl.epsilon.start=1.5", "rl.epsilon.start"),
        ("rl.epsilon.decay_steps=0", "rl.epsilon.decay_steps"),
        ("rl.qtable_alpha=0", "rl.qtable_alpha"),
        ("rl.hidden=[64, 0]", "hidden layer sizes must be >= 1"),
        ("rl.policy_id=has space", "policy_id must be letters"),
        ("rl.table=a/b", "table must be letters"),
        ("rl.nstep=3", "rl.nstep"),  # a typo is an unknown key, not silently ignored
    ],
)
def test_bad_rl_values_fail_at_load_naming_the_key(override, fragment):
    with pytest.raises(ConfigError) as info:
        load_config(CARTPOLE, [override])
    assert fragment in str(info.value)


# ---- epsilon schedule ---------------------------------------------------------------------


def test_epsilon_decays_linearly_then_stays():
    eps = EpsilonSchedule(start=1.0, end=0.1, decay_steps=100)
    assert eps.at(0) == pytest.approx(1.0)
    assert eps.at(50) == pytest.approx(0.55)
    assert eps.at(100) == pytest.approx(0.1)
    assert eps.at(10_000) == pytest.approx(0.1)
    values = [eps.at(s) for s in range(0, 120, 10)]
    assert all(a >= b for a, b in zip(values, values[1:]))


def test_rl_config_defaults_are_a_dqn_on_cartpole():
    rl = RLConfig()
    assert (rl.env_id, rl.algo, rl.table) == ("CartPole-v1", "dqn", "transitions")
    assert rl.epsilon.at(0) == 1.0


# ---- specs from env spaces ----------------------------------------------------------------


def test_spec_for_box_and_discrete_envs():
    cart = spec_for_env("CartPole-v1", "dqn", [32])
    assert cart == PolicySpec("dqn", 4, 2, (32,), discrete_obs=False)
    taxi = spec_for_env("Taxi-v3", "qtable")
    assert taxi == PolicySpec("qtable", 500, 6, (), discrete_obs=True)
    assert (obs_width(cart), obs_width(taxi)) == (4, 1)  # a Discrete state is stored as one number


def test_spec_refuses_what_q_learning_cannot_do():
    with pytest.raises(ValueError, match="tabular Q-learning needs a Discrete observation space"):
        spec_for_env("CartPole-v1", "qtable")
    with pytest.raises(ValueError, match="is not Discrete"):
        spec_for_env("Pendulum-v1", "dqn")  # continuous actions


def test_spec_round_trips_through_a_dict():
    spec = PolicySpec("dqn", 4, 2, (16, 8))
    d = spec.to_dict()
    assert d["hidden"] == [16, 8]  # JSON-friendly: a list, not a tuple
    assert PolicySpec.from_dict(d) == spec
