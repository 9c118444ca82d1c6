"""Drift on CartPole without a cluster: the physics wrapper, the epsilon boost, the workers' drift,
the RL controller's rules and the loop's RLDriftWatch (plain workers behind a shim for Ray's calls)."""

from __future__ import annotations

import random
from types import SimpleNamespace

import gymnasium as gym
import numpy as np
import pytest
import torch
from pydantic import ValidationError

from actors.evaluator import Evaluator, greedy_returns
from actors.rollout import RolloutWorker
from cluster.loops.rl_drift import RLDriftWatch, check_drift
from core.adapt.detectors import Alarm
from core.adapt.rl_controller import RLAdaptSection, RLController
from core.config.rl import EpsilonSection, RLSection
from core.rl.drift import EpsilonBoost, PhysicsShift, physics_wrappers
from core.models.q import spec_for_env
from core.models.q_policy import QPolicy


# ---- the physics wrapper ---------------------------------------------------------------------
def test_shift_sets_the_physics_and_recomputes_what_cartpole_derives():
    env = PhysicsShift(gym.make("CartPole-v1"), {"length": 0.2, "masspole": 0.3})
    base = env.unwrapped
    assert (base.length, base.masspole, env.shifted) == (0.5, 0.1, False)  # nothing before shift()
    env.shift()
    assert (base.length, base.masspole) == (0.2, 0.3)
    assert base.total_mass == pytest.approx(1.3) and base.polemass_length == pytest.approx(0.06)
    assert env.before == {"length": 0.5, "masspole": 0.1}


def _fall_steps(settings, action: int = 0) -> float:
    """Steps until a pole starting upright falls under a constant push (one seed)."""
    env = gym.make("CartPole-v1")
    env = PhysicsShift(env, settings, shifted=True) if settings else env
    env.reset(seed=3)
    steps, done = 0, False
    while not done:
        _, _, term, trunc, _ = env.step(action)
        steps, done = steps + 1, term or trunc
    return steps


def test_the_dynamics_really_change():
    # a shorter pole falls sooner; a reversed force pushes it the other way
    assert _fall_steps({"length": 0.05}) < _fall_steps(None)
    env = PhysicsShift(gym.make("CartPole-v1"), {"force_mag": -10.0}, shifted=True)
    obs, _ = env.reset(seed=0)
    after, *_ = env.step(1)  # action 1 pushes right, except on the reversed cart
    assert after[1] < obs[1]


@pytest.mark.parametrize("settings, match", [
    ({"pole_length": 0.2}, "no numeric attribute 'pole_length'.*'length'"),
    ({"total_mass": 2.0}, "derived"),
    ({"kinematics_integrator": 1.0}, "no numeric attribute"),
])
def test_bad_names_are_refused_with_what_can_be_set(settings, match):
    with pytest.raises(ValueError, match=match):
        PhysicsShift(gym.make("CartPole-v1"), settings)


def test_vector_envs_shift_every_sub_env_through_call():
    env = gym.make_vec("CartPole-v1", num_envs=3, vectorization_mode="sync", wrappers=physics_wrappers({"gravity": 19.6}))
    env.call("shift")
    assert env.get_attr("gravity") == (19.6, 19.6, 19.6)
    assert physics_wrappers(None) == [] and physics_wrappers({}) == []


def test_drift_config_needs_settings_and_names_are_checked_before_the_run():
    with pytest.raises(ValidationError, match="drift.set"):
        RLSection.model_validate({"drift": {"after_env_steps": 10}})
    check_drift(RLSection())  # no drift: nothing to check
    with pytest.raises(ValueError, match="no numeric attribute 'lenght'"):
        check_drift(RLSection.model_validate({"drift": {"after_env_steps": 10, "set": {"lenght": 0.2}}}))


# ---- the epsilon boost -------------------------------------------------------------------------
def test_the_boost_restarts_epsilon_and_decays_back_to_the_schedules_end():
    schedule = EpsilonSection(start=1.0, end=0.02, decay_steps=100)
    boost = EpsilonBoost(start=500, value=0.5, steps=100)
    assert boost.at(schedule, 499) == pytest.approx(0.02)  # before the boost: the schedule
    assert boost.at(schedule, 500) == pytest.approx(0.5)
    assert boost.at(schedule, 550) == pytest.approx(0.26)  # halfway: (0.5 + 0.02) / 2
    assert boost.at(schedule, 600) == pytest.approx(0.02)  # bounded: over after `steps`
    assert EpsilonBoost(start=10, value=0.5, steps=100).at(schedule, 10) == pytest.approx(0.902)  # never below the schedule


def _worker(drift=None, eps=(0.0, 0.0, 10), seed=0, num_envs=4):
    cfg = RLSection(policy_id="cartpole", hidden=[16],
                    acting={"num_envs": num_envs, "epsilon": EpsilonSection(start=eps[0], end=eps[1], decay_steps=eps[2])},
                    **({"drift": drift} if drift else {}))
    torch.manual_seed(seed)
    writer = SimpleNamespace(add=lambda table, batch, timeout_s=None: None)
    return RolloutWorker(cfg, spec_for_env(cfg.env_id, cfg.algo, cfg.hidden), "a0", writer, None, seed=seed)


def test_a_worker_boosts_epsilon_and_reports_it():
    w = _worker(eps=(1.0, 0.02, 10))
    w.run(20)
    assert w.stats()["epsilon"] == pytest.approx(0.02)
    w.boost_epsilon(0.6, 10)
    assert w.stats()["epsilon"] == pytest.approx(0.6)
    w.run(5)
    assert w.stats()["epsilon"] == pytest.approx(0.6 + 0.5 * (0.02 - 0.6))
    w.run(10)
    assert w.stats()["epsilon"] == pytest.approx(0.02)


def test_a_worker_applies_the_drift_once_and_hands_over_finished_returns_once():
    w = _worker(drift={"after_env_steps": 0, "set": {"length": 0.05}})
    w.run(60)
    before = w.drain_returns()
    assert before and all(r > 0 for _, r in before) and w.drain_returns() == []
    assert [s for s, _ in before] == sorted(s for s, _ in before)
    assert not w.stats()["drifted"] and w.env.get_attr("length") == (0.5,) * 4
    at = w.apply_drift()
    assert at == w.env_steps and w.apply_drift() == at and w.stats()["drifted"]
    assert w.env.get_attr("length") == (0.05,) * 4
    with pytest.raises(ValueError, match="not configured"):
        _worker().apply_drift()


def test_the_evaluator_plays_the_changed_env_after_apply_drift():
    spec = spec_for_env("CartPole-v1", "dqn", [16])
    torch.manual_seed(0)
    ev = Evaluator("CartPole-v1", spec, episodes=4, seed=1, drift={"force_mag": -10.0})
    weights = QPolicy(spec).model.state_dict()
    assert ev.evaluate(1, weights)["drifted"] is False
    ev.apply_drift()
    assert ev.evaluate(2, weights)["drifted"] is True
    same = greedy_returns("CartPole-v1", ev.policy, 4, 1, {"force_mag": -10.0})
    assert ev.results[-1]["eval_return"] == pytest.approx(float(same.mean()))
    assert "drifted" not in Evaluator("CartPole-v1", spec, 2).evaluate(1, weights)


# ---- the controller ------------------------------------------------------------------------
def _alarm(at=100):
    return Alarm("returns", "page_hinkley", at, 0.95, 0.1)


def test_an_alarm_cuts_replay_and_boosts_epsilon_if_asked_then_the_cooldown_holds():
    ctl = RLController(RLAdaptSection(enabled=True, cooldown_env_steps=10_000, epsilon=0.4, epsilon_steps=200))
    first = ctl.on_alarm(_alarm(), env_steps=50_000)
    assert first.actions == [{"action": "replay_cutoff"}, {"action": "epsilon_boost", "epsilon": 0.4, "steps": 200}]
    held = ctl.on_alarm(_alarm(120), env_steps=56_000)
    assert held.actions == [] and held.suppressed == "cooldown: 4000 more env steps"
    assert ctl.on_alarm(_alarm(150), env_steps=60_000).actions  # the cooldown is over
    no_cut = RLController(RLAdaptSection(enabled=True, epsilon=0.3, replay_cutoff=False)).on_alarm(_alarm(), 0)
    assert [a["action"] for a in no_cut.actions] == ["epsilon_boost"]
    default = RLController(RLAdaptSection(enabled=True)).on_alarm(_alarm(), 0)
    assert default.actions == [{"action": "replay_cutoff"}]  # no boost unless asked


def _returns(solved: int, failing: int, seed=0):
    """Training episode returns of a solved CartPole policy (mostly 500, rare exploratory dips),
    then of one that fails on new physics."""
    rng = random.Random(seed)
    ok = [500.0 if rng.random() < 0.9 else rng.uniform(150, 500) for _ in range(solved)]
    return ok + [rng.uniform(8, 40) for _ in range(failing)]


def test_the_default_returns_detector_is_quiet_on_a_solved_policy_and_fast_on_a_failing_one():
    from core.adapt.detectors import Detector

    for seed in range(5):
        det = Detector("returns", RLAdaptSection().returns, "down")
        alarms = [i for i, r in enumerate(_returns(3000, 40, seed)) if det.update(r / 500)]
        assert alarms and alarms[0] >= 3000, f"seed {seed}: alarm at {alarms[:3]}"
        assert alarms[0] < 3000 + 10  # a few failing episodes (32 envs end them within a step or two)


# ---- RLDriftWatch ------------------------------------------------------------------------------
class Shim:
    """Stands for a Ray handle: `handle.method.remote(*args)` calls the plain object at once."""

    def __init__(self, target):
        self.target = target

    def __getattr__(self, name):
        return SimpleNamespace(remote=getattr(self.target, name))


class CutoffLog:
    def __init__(self):
        self.tables = []

    def cutoff(self, table):
        self.tables.append(table)
        return 123


def _watch(adapt=True, after_solved=False, stop=True, workers=1):
    rl = RLSection.model_validate({
        "policy_id": "cartpole", "acting": {"num_envs": 4}, "hidden": [16],
        "drift": {"after_env_steps": 100, "set": {"force_mag": -10.0}, "after_solved": after_solved,
                  "stop_when_recovered": stop},
        "adapt": {"enabled": adapt, "after_solved": False, "cooldown_env_steps": 1000, "epsilon": 0.5},
    })
    events = []
    watch = RLDriftWatch(rl, lambda kind, **fields: events.append({"event": kind, **fields}))
    ws = [_worker(drift=rl.drift.model_dump(), seed=i) for i in range(workers)]
    group = SimpleNamespace(handles=[Shim(w) for w in ws], stats={})
    spec = spec_for_env("CartPole-v1", "dqn", [16])
    evaluator = Evaluator("CartPole-v1", spec, 2, drift=rl.drift.set)
    replay = CutoffLog()
    watch.bind(group, Shim(evaluator), replay, solve_return=475.0)
    watch.get = lambda refs, timeout_s=5.0: list(refs)
    return watch, events, ws, group, evaluator, replay


def _poll(watch, group, ws, solved=True):
    group.stats = {i: w.stats() for i, w in enumerate(ws)}
    total = sum(w.env_steps for w in ws)
    watch.poll(total, solved)
    return total


def test_the_watch_changes_the_env_once_when_due():
    watch, events, ws, group, evaluator, _ = _watch()
    ws[0].run(20)  # 80 env steps: not due
    _poll(watch, group, ws, solved=False)
    assert watch.at_env_steps is None and not ws[0].stats()["drifted"]
    ws[0].run(10)
    total = _poll(watch, group, ws, solved=False)
    assert watch.at_env_steps == total == 120 and ws[0].drifted_at == 120 and evaluator.physics is not None
    _poll(watch, group, ws)
    assert [e["event"] for e in events].count("env_drift") == 1
    assert events[0] == {"event": "env_drift", "env_steps": 120, "set": {"force_mag": -10.0}, "actors": 1}


def test_after_solved_counts_the_env_steps_from_the_solve():
    watch, _, ws, group, _, _ = _watch(after_solved=True)
    ws[0].run(30)
    _poll(watch, group, ws, solved=False)  # 120 env steps, not solved: not due
    ws[0].run(5)
    _poll(watch, group, ws, solved=True)  # solved at 140
    ws[0].run(20)
    _poll(watch, group, ws, solved=True)  # 220: 80 since the solve
    assert watch.at_env_steps is None
    ws[0].run(5)
    _poll(watch, group, ws, solved=True)
    assert watch.at_env_steps == 240 and watch.summary()["solved_at_env_steps"] == 140


def test_a_restarted_actor_is_asked_again():
    watch, _, ws, group, _, _ = _watch(adapt=False)
    ws[0].run(30)
    _poll(watch, group, ws)
    ws[0].drifted_at = None  # what a restart leaves: a fresh worker on the old physics
    _poll(watch, group, ws)
    assert ws[0].drifted_at is not None


def test_an_alarm_after_the_change_boosts_the_actors_and_cuts_replay_and_the_cooldown_holds():
    watch, events, ws, group, _, replay = _watch(workers=2)
    for w in ws:
        w.finished.extend((i, 500.0) for i in range(200))  # a solved policy's episodes
    _poll(watch, group, ws)
    assert watch.alarms == []
    for w in ws:
        w.run(30)
        w.drain_returns()  # a random policy's episodes: not what this test feeds
    _poll(watch, group, ws)  # the change
    for w in ws:
        w.finished.extend((w.env_steps, 10.0) for _ in range(20))  # failing on the new physics
    _poll(watch, group, ws)
    adapt = [e for e in events if e["event"] == "adapt"]
    acted = [e for e in adapt if e["action"]]
    assert [e["action"] for e in acted] == ["replay_cutoff", "epsilon_boost"]
    assert acted[0]["signal"] == "returns" and acted[0]["detector"] == "page_hinkley"
    assert acted[0]["rows_removed"] == 123 and replay.tables == ["transitions"]
    assert all(w.stats()["epsilon"] == pytest.approx(0.5) for w in ws)
    assert all(e["suppressed"].startswith("cooldown") for e in adapt if not e["action"])
    s = watch.summary()
    assert s["at_env_steps"] == 240 and s["detection_delay_env_steps"] == 0
    assert s["alarms"][0] == 240 and s["adapted_at_env_steps"] == [240]


def test_recovery_counts_env_steps_to_the_first_eval_at_the_solve_return_on_the_changed_env():
    watch, events, ws, group, _, _ = _watch(adapt=False)
    ws[0].run(30)
    watch.on_eval({"version": 3, "eval_return": 500.0, "drifted": False}, 110)  # before: ignored
    _poll(watch, group, ws)
    assert watch.summary()["alarms"] == [] and not watch.done()
    watch.on_eval({"version": 4, "eval_return": 500.0, "drifted": False}, 130)  # the old env: ignored
    watch.on_eval({"version": 5, "eval_return": 9.0, "drifted": True}, 300)
    watch.on_eval({"version": 6, "eval_return": 500.0, "drifted": True}, 900)  # a spike: the streak breaks
    watch.on_eval({"version": 7, "eval_return": 30.0, "drifted": True}, 1000)
    for v, at in ((9, 2120), (10, 2500)):
        watch.on_eval({"version": v, "eval_return": 480.0, "drifted": True, "confirmed": True}, at)
    assert not watch.done()
    watch.on_eval({"version": 11, "eval_return": 500.0, "drifted": True}, 3000)  # three in a row
    watch.on_eval({"version": 12, "eval_return": 20.0, "drifted": True}, 3500)  # after: no matter
    s = watch.summary()
    assert (s["at_env_steps"], s["recovered_at_env_steps"], s["recovery_env_steps"]) == (120, 2120, 2000)
    assert s["worst_eval_return"] == 9.0 and s["recovered_version"] == 9 and watch.done()
    assert s["detection_delay_env_steps"] is None and s["adapt"] is False
    assert [e["event"] for e in events] == ["env_drift", "recovered"]


def test_without_drift_or_adapt_the_watch_does_nothing():
    watch = RLDriftWatch(RLSection(), lambda *a, **k: None)
    assert not watch.active and watch.figures() == {} and not watch.done()


# ---- the reference check: a changed world or a worse learner ---------------------------------
def test_the_evaluator_keeps_the_last_confirmed_version_and_plays_it_on_the_env_as_it_is_now():
    spec = spec_for_env("CartPole-v1", "dqn", [16])
    evaluator = Evaluator("CartPole-v1", spec, 2, solve_return=5.0, confirm_episodes=3, drift={"force_mag": -3.0})
    assert evaluator.play_reference(3) is None  # nothing confirmed yet: no reference
    torch.manual_seed(0)
    weights = QPolicy(spec).model.state_dict()
    assert evaluator.evaluate(4, weights)["confirmed"]  # any policy keeps a pole up for 5 steps
    before = evaluator.play_reference(3)
    assert before["version"] == 4 and before["episodes"] == 3 and before["drifted"] is False
    evaluator.apply_drift()
    after = evaluator.play_reference(3)
    assert after["drifted"] is True and after["eval_return"] != before["eval_return"]  # a weaker push
    assert evaluator.results[-1]["version"] == 4  # playing the reference is not an evaluation


class Reference:
    """The evaluator's reference check, answering `eval_return` (None: no confirmed version)."""

    def __init__(self, eval_return):
        self.eval_return, self.asked = eval_return, 0

    def play_reference(self, episodes):
        self.asked += 1
        return None if self.eval_return is None else {"version": 3, "eval_return": self.eval_return,
                                                      "episodes": episodes}


def _alarm_with_reference(eval_return, ready=lambda reply: True):
    watch, events, ws, group, _, replay = _watch(workers=2)
    reference = Reference(eval_return)
    watch.evaluator, watch.ready = Shim(reference), ready
    for w in ws:
        w.finished.extend((i, 500.0) for i in range(200))  # a solved policy's episodes
    _poll(watch, group, ws)
    for w in ws:
        w.finished.extend((w.env_steps, 10.0) for _ in range(20))  # then failing ones, on the same env
    _poll(watch, group, ws)
    return watch, events, replay, reference


def test_an_alarm_whose_reference_still_holds_is_the_learners_regression_and_is_not_answered():
    watch, events, replay, reference = _alarm_with_reference(490.0)
    assert reference.asked >= 1 and watch.alarms == [] and replay.tables == []
    regressions = [e for e in events if e["event"] == "regression"]
    assert regressions and regressions[0]["reference_version"] == 3 and regressions[0]["reference_return"] == 490.0
    assert not [e for e in events if e["event"] == "adapt"]
    s = watch.summary()
    assert s["alarms"] == [] and s["regressions"] == [r["alarm_env_steps"] for r in regressions]
    assert watch.figures()["regressions"] == len(regressions)


@pytest.mark.parametrize("eval_return", [12.0, None], ids=["reference-fails-too", "no-reference"])
def test_an_alarm_whose_reference_fails_too_is_a_change_of_the_world(eval_return):
    watch, events, replay, _ = _alarm_with_reference(eval_return)
    assert replay.tables == ["transitions"] and watch.regressions == []
    assert watch.alarms and watch.alarms[0].get("reference_return") == eval_return
    acted = [e for e in events if e["event"] == "adapt" and e["action"]]
    assert [e["action"] for e in acted] == ["replay_cutoff", "epsilon_boost"]
    assert acted[0].get("reference_return") == eval_return  # the event says what the check saw


def test_an_alarm_waits_for_the_reference_and_is_judged_when_it_answers():
    answered = []
    watch, events, replay, _ = _alarm_with_reference(12.0, ready=lambda reply: bool(answered))
    assert watch.checking and replay.tables == [] and watch.alarms == []
    answered.append(True)
    watch.poll(watch.summary()["solved_at_env_steps"] or 0, True)
    assert not watch.checking and replay.tables == ["transitions"] and len(watch.alarms) == 1
