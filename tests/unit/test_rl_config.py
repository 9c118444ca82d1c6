"""An rl loop's section without a cluster: presets, its table check, bad values, epsilon, env specs."""

from __future__ import annotations

from pathlib import Path

import pytest

from core.config.loader import ConfigError, load_config
from core.config.rl import EpsilonSection, RLSection
from core.models.q import PolicySpec, obs_width, spec_for_env

REPO = Path(__file__).resolve().parents[2]
CARTPOLE, TAXI, DEFAULT = REPO / "configs/cartpole.yaml", REPO / "configs/taxi.yaml", REPO / "configs/default.yaml"


# ---- presets ------------------------------------------------------------------------------


@pytest.mark.parametrize(
    "path, name, env_id, algo, n_actions",
    [(CARTPOLE, "cartpole", "CartPole-v1", "dqn", 2), (TAXI, "taxi", "Taxi-v3", "qtable", 6)],
    ids=["cartpole", "taxi"],
)
def test_presets_load_as_rl_loops_whose_table_fits_the_env(path, name, env_id, algo, n_actions, tmp_path):
    cfg = load_config(path)
    assert list(cfg.loops) == [name] and cfg.loops[name].kind == "rl"
    rl = cfg.loops[name]
    assert (rl.env_id, rl.algo, rl.policy_id, rl.table) == (env_id, algo, name, name)  # named after the loop
    table = cfg.replay.tables[rl.table]
    assert table.kind == "transitions" and table.obs_dim is None  # taken from the env
    _prepared(cfg, tmp_path, name)
    spec = spec_for_env(rl.env_id, rl.algo, rl.hidden)
    assert table.obs_dim == obs_width(spec)
    assert spec.n_actions == n_actions


def _prepared(cfg, tmp_path, name="cartpole"):
    """RLLoop.prepare() as `evolve run` calls it before Ray starts (no cluster here)."""
    from cluster.loop import RunContext
    from cluster.loops.rl import RLLoop
    from cluster.rundir import RunDir
    from core.storage.registry import PolicyRegistry

    loop = RLLoop(cfg, RunContext(cfg, RunDir(tmp_path / "run"), PolicyRegistry(tmp_path / "registry")), name)
    loop.prepare()
    return loop


def test_another_env_with_the_cartpole_preset_takes_its_obs_width_from_the_env(tmp_path):
    cfg = load_config(CARTPOLE, ["loops.cartpole.env_id=MountainCar-v0"])
    loop = _prepared(cfg, tmp_path)
    assert cfg.replay.tables["cartpole"].obs_dim == 2 and loop.spec.n_actions == 3
    assert loop.solve_return == -110.0


def test_an_obs_width_that_does_not_fit_the_env_is_refused_naming_the_key(tmp_path):
    from cluster.errors import UserError

    cfg = load_config(CARTPOLE, ["replay.tables.cartpole.obs_dim=3"])
    with pytest.raises(UserError, match=r"replay.tables.cartpole.obs_dim must be 4 for CartPole-v1 \(got 3"):
        _prepared(cfg, tmp_path)


def test_cartpole_preset_values_reach_the_section():
    rl = load_config(CARTPOLE).loops["cartpole"]
    assert rl.learning.n_step == 3 and rl.learning.target_update_every == 100 and rl.hidden == [128, 128]
    assert rl.acting.epsilon == EpsilonSection(start=1.0, end=0.02, decay_steps=375)
    assert rl.acting.num_envs * rl.acting.epsilon.decay_steps == 12_000  # env steps of exploration, whatever num_envs
    assert (rl.acting.min_steps_per_write, rl.acting.steps_per_write) == (64, 256)


def test_min_steps_per_write_above_the_maximum_is_refused():
    with pytest.raises(ConfigError, match="min_steps_per_write must be <= steps_per_write"):
        load_config(CARTPOLE, ["loops.cartpole.acting.min_steps_per_write=512"])


# ---- a loop's transitions table must be a declared transitions table -----------------------


@pytest.mark.parametrize(
    "path, overrides, fragment",
    [
        (CARTPOLE, ["replay.tables.nope={kind: feedback}", "loops.cartpole.tables.transitions=nope"],
         "loops.cartpole.tables.transitions 'nope' must be of kind 'transitions', not 'feedback'"),
        (DEFAULT, ["loops.cartpole.tables.transitions=sentiment-text"],
         "must be of kind 'transitions', not 'text'"),
        (CARTPOLE, ["replay.enabled=false"], "loops.cartpole.tables.transitions 'cartpole' must be a table declared"),
        (CARTPOLE, ["loops.cartpole.tables.states=x"], "a rl loop writes transitions, not states"),
    ],
)
def test_a_loops_table_is_checked(path, overrides, fragment):
    with pytest.raises(ConfigError) as info:
        load_config(path, overrides)
    assert fragment in str(info.value)
    assert "\n" not in str(info.value)  # one line, like every config error


def test_a_table_the_config_does_not_declare_is_declared_with_the_kinds_settings():
    cfg = load_config(CARTPOLE, ["loops.cartpole.tables.transitions=steps"])
    assert cfg.replay.tables["steps"].kind == "transitions" and cfg.loops["cartpole"].table == "steps"


@pytest.mark.parametrize(
    "override, fragment",
    [
        ("loops.cartpole.learning.gamma=0", "loops.cartpole.learning.gamma"),
        ("loops.cartpole.learning.gamma=1.5", "loops.cartpole.learning.gamma"),
        ("loops.cartpole.learning.n_step=0", "loops.cartpole.learning.n_step"),
        ("loops.cartpole.learning.n_step=21", "loops.cartpole.learning.n_step"),
        ("loops.cartpole.algo=ppo", "loops.cartpole.algo"),
        ("loops.cartpole.acting.num_envs=0", "loops.cartpole.acting.num_envs"),
        ("loops.cartpole.acting.epsilon.start=1.5", "loops.cartpole.acting.epsilon.start"),
        ("loops.cartpole.acting.epsilon.decay_steps=0", "loops.cartpole.acting.epsilon.decay_steps"),
        ("loops.cartpole.learning.qtable_alpha=0", "loops.cartpole.learning.qtable_alpha"),
        ("loops.cartpole.hidden=[64, 0]", "hidden layer sizes must be >= 1"),
        ("loops.cartpole.policy_id=has space", "policy_id must be letters"),
        ("loops.cartpole.tables.transitions=a/b", "loops.cartpole.tables.transitions 'a/b': a table name is letters"),
        ("loops.cartpole.learning.nstep=3", "loops.cartpole.learning.nstep: unknown key"),  # a typo is an error
        ("loops.cartpole.n_step=3", "loops.cartpole.n_step: unknown key (known here: acting, adapt, algo"),
    ],
)
def test_bad_rl_values_fail_at_load_naming_the_key(override, fragment):
    with pytest.raises(ConfigError) as info:
        load_config(CARTPOLE, [override])
    assert fragment in str(info.value)


# ---- epsilon schedule ---------------------------------------------------------------------


def test_epsilon_decays_linearly_then_stays():
    eps = EpsilonSection(start=1.0, end=0.1, decay_steps=100)
    assert eps.at(0) == pytest.approx(1.0)
    assert eps.at(50) == pytest.approx(0.55)
    assert eps.at(100) == pytest.approx(0.1)
    assert eps.at(10_000) == pytest.approx(0.1)
    values = [eps.at(s) for s in range(0, 120, 10)]
    assert all(a >= b for a, b in zip(values, values[1:]))


def test_rl_section_defaults_are_a_dqn_on_cartpole():
    rl = RLSection()
    assert (rl.env_id, rl.algo, rl.table) == ("CartPole-v1", "dqn", "transitions")
    assert rl.acting.epsilon.at(0) == 1.0


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
