"""The RL loop's drift: the env's physics change once, the adaptive layer answers, recovery is measured.

    every poll:
      env steps >= rl.drift.after_env_steps (counted from the confirmed solve, with after_solved)
          -> apply_drift on every rollout actor and the evaluator, once           event env_drift
      finished training episodes (actors' drain_returns), return / solve_return
          -> Detector (river; rl.adapt.returns) -> alarm
          -> the evaluator plays the last confirmed version on the env as it is now:
             it still holds: the learner got worse, not the world                 event regression
             it fails too (or there is none): RLController
          -> epsilon_boost (every actor), replay_cutoff (the replay client)       event adapt
    every greedy evaluation on the changed env:
      rl.drift.hold_evals in a row at solve_return -> recovered (env steps from the change to the
      first of them)

`RLDriftWatch` holds the decisions and the figures; the Ray calls go through
`call` and `get`, so a test drives it with plain workers behind a shim.
An actor or evaluator that restarts forgets the change: one that reports the
old physics after the change is asked again.
"""

from __future__ import annotations

from typing import Any, Callable

import time

import ray

from core.adapt.detectors import Detector
from core.adapt.rl_controller import RLController
from core.config.rl import RLSection
from core.rl.drift import check_physics


def check_drift(rl: RLSection) -> None:
    """Before Ray starts: ValueError unless `rl.drift.set` names numeric attributes of the env."""
    if not rl.drift.enabled:
        return
    import gymnasium as gym

    env = gym.make(rl.env_id)
    try:
        check_physics(env, rl.drift.set)
    finally:
        env.close()


def call(handle: Any, method: str, *args: Any) -> Any:
    return getattr(handle, method).remote(*args)


def ready(ref: Any) -> bool:
    """Whether a reply can be read without waiting (a plain value always can)."""
    if not isinstance(ref, ray.ObjectRef):
        return True
    done, _ = ray.wait([ref], timeout=0)
    return bool(done)


def get(refs: list[Any], timeout_s: float = 5.0) -> list[Any]:
    """The replies that came within the timeout; None for the others (a restarting actor)."""
    ready, _ = ray.wait(refs, num_returns=len(refs), timeout=timeout_s)
    out = []
    for ref in refs:
        try:
            out.append(ray.get(ref) if ref in ready else None)
        except ray.exceptions.RayActorError:
            out.append(None)
    return out


class RLDriftWatch:
    def __init__(self, rl: RLSection, event: Callable[..., None]):
        self.drift, self.adapt, self.table = rl.drift, rl.adapt, rl.table
        self.event = event
        self.solve_return = 1.0
        self.detector = Detector("returns", rl.adapt.returns, "down") if rl.adapt.enabled else None
        self.controller = RLController(rl.adapt) if rl.adapt.enabled else None
        self.actors = self.evaluator = self.replay = None
        self.call, self.get, self.ready = call, get, ready
        self.solved_at: int | None = None  # the loop's env steps at the first poll that saw it solved
        self.at_env_steps: int | None = None
        self.alarms: list[dict[str, Any]] = []  # alarms read as a change of the world
        self.regressions: list[dict[str, Any]] = []  # alarms the reference check read as the learner's
        self.checking: list[dict[str, Any]] = []  # alarms waiting for the reference's episodes
        self.adapted_at: list[int] = []  # env steps of each adaptation that acted
        self.recovered: dict[str, Any] | None = None
        self.streak: list[dict[str, Any]] = []  # evaluations in a row at the solve return, not yet enough
        self.worst_eval: float | None = None  # lowest greedy return on the changed env before recovery

    @property
    def active(self) -> bool:
        return self.drift.enabled or self.adapt.enabled

    def bind(self, actors: Any, evaluator: Any, replay: Any, solve_return: float) -> None:
        """`actors`: the loop's ActorGroup (handles and their last stats)."""
        self.actors, self.evaluator, self.replay = actors, evaluator, replay
        self.solve_return = solve_return

    # ---- every poll --------------------------------------------------------------------
    def poll(self, env_steps: int, solved: bool) -> None:
        if solved and self.solved_at is None:
            self.solved_at = env_steps
        if self.drift.enabled:
            if self.at_env_steps is None and self.due(env_steps, solved):
                self._apply(env_steps)
            elif self.at_env_steps is not None:
                self._reapply()
        if self.detector is None:
            return
        returns = self._drain(env_steps)  # also before the detector watches: those are dropped
        if solved or not self.adapt.after_solved:
            for decision in self.observe(returns, env_steps):
                self._act(decision, env_steps)

    def due(self, env_steps: int, solved: bool) -> bool:
        if not self.drift.after_solved:
            return env_steps >= self.drift.after_env_steps
        return self.solved_at is not None and env_steps - self.solved_at >= self.drift.after_env_steps

    def _apply(self, env_steps: int) -> None:
        handles = self.actors.handles
        replies = self.get([self.call(h, "apply_drift") for h in handles], 30.0)
        self.call(self.evaluator, "apply_drift")
        # the env steps the actors made between the stats poll and the change
        extra = sum(max(0, r - self.actors.stats.get(i, {}).get("env_steps", r))
                    for i, r in enumerate(replies) if r is not None)
        self.at_env_steps = env_steps + extra
        self.event("env_drift", env_steps=self.at_env_steps, set=dict(self.drift.set),
                   actors=sum(r is not None for r in replies))

    def _reapply(self) -> None:
        for i, h in enumerate(self.actors.handles):
            if self.actors.stats.get(i, {}).get("drifted") is False:
                self.call(h, "apply_drift")

    def _drain(self, env_steps: int) -> list[tuple[int, float]]:
        """(estimated loop env steps at the episode's end, return), oldest first.  An episode's
        own env steps are its actor's; the loop's are estimated from how far that actor has
        stepped since (the actors step at about the same rate)."""
        handles = self.actors.handles
        out = []
        for i, reply in enumerate(self.get([self.call(h, "drain_returns") for h in handles])):
            if not reply:
                continue
            now = self.actors.stats.get(i, {}).get("env_steps", reply[-1][0])
            out += [(env_steps - max(0, now - steps) * len(handles), ret) for steps, ret in reply]
        return sorted(out)

    # ---- the detector and the controller -------------------------------------------------
    def observe(self, returns: list[tuple[int, float]], env_steps: int) -> list[dict[str, Any]]:
        """Feed (env steps, return) pairs; the controller's decision for each alarm that the
        reference check has settled as a change of the world."""
        for at, ret in returns:
            alarm = self.detector.update(ret / self.solve_return)
            if alarm is not None:
                self.checking.append({"alarm": alarm, "at": at, "since": time.time(), "reply": self._ask_reference()})
        decisions = []
        while self.checking and self._settled(self.checking[0]):
            decision = self._judge(self.checking.pop(0), env_steps)
            if decision is not None:
                decisions.append(decision)
        return decisions

    def _ask_reference(self) -> Any:
        if not self.adapt.reference_episodes or self.evaluator is None:
            return None
        return self.call(self.evaluator, "play_reference", self.adapt.reference_episodes)

    def _settled(self, check: dict[str, Any]) -> bool:
        # a restarting evaluator may never answer: after a minute the alarm is taken as it is
        return check["reply"] is None or self.ready(check["reply"]) or time.time() - check["since"] > 60

    def _judge(self, check: dict[str, Any], env_steps: int) -> dict[str, Any] | None:
        alarm, at = check["alarm"], check["at"]
        reference = self.get([check["reply"]], 1.0)[0] if check["reply"] is not None else None
        if reference is not None and reference["eval_return"] >= self.adapt.reference_share * self.solve_return:
            self.regressions.append({"env_steps": at, **alarm.to_dict()})
            self.event("regression", **alarm.to_dict(), alarm_env_steps=at, reference_version=reference["version"],
                       reference_return=reference["eval_return"], env_steps=env_steps)
            return None
        checked = {"reference_version": reference["version"], "reference_return": reference["eval_return"]} \
            if reference else {}
        self.alarms.append({"env_steps": at, **alarm.to_dict(), **checked})
        return {"alarm_env_steps": at, **checked, **self.controller.on_alarm(alarm, env_steps).to_dict()}

    def _act(self, decision: dict[str, Any], env_steps: int) -> None:
        alarm = {k: decision[k] for k in ("signal", "detector", "before", "after", "alarm_env_steps",
                                          "reference_version", "reference_return") if k in decision}
        if not decision["actions"]:
            self.event("adapt", **alarm, action=None, suppressed=decision["suppressed"], env_steps=env_steps)
            return
        self.adapted_at.append(env_steps)
        for action in decision["actions"]:
            done: dict[str, Any] = {}
            if action["action"] == "epsilon_boost":
                for h in self.actors.handles:
                    self.call(h, "boost_epsilon", action["epsilon"], action["steps"])
            elif action["action"] == "replay_cutoff" and self.replay is not None:
                done["rows_removed"] = self.replay.cutoff(self.table)
            self.event("adapt", **alarm, **action, **done, env_steps=env_steps)

    # ---- evaluations, the end, the summary -------------------------------------------------
    def on_eval(self, result: dict[str, Any], env_steps: int) -> None:
        """A greedy evaluation's result; `env_steps`: the loop's when it finished."""
        if self.at_env_steps is None or "drifted" not in result:
            return
        if not result["drifted"]:  # a restarted evaluator plays the old env: ask it again
            self.call(self.evaluator, "apply_drift")
            return
        if self.recovered is not None:
            return
        if result["eval_return"] < self.solve_return:
            self.streak = []
            self.worst_eval = min(result["eval_return"], self.worst_eval if self.worst_eval is not None else float("inf"))
            return
        self.streak.append({"env_steps": max(env_steps, self.at_env_steps), "version": result["version"],
                            "eval_return": result["eval_return"], "confirmed": result.get("confirmed")})
        if len(self.streak) >= self.drift.hold_evals:
            self.recovered = {**self.streak[0], "held_to_version": result["version"]}
            self.event("recovered", **self.recovered, recovery_env_steps=self.recovery_env_steps)

    @property
    def recovery_env_steps(self) -> int | None:
        return None if self.recovered is None else self.recovered["env_steps"] - self.at_env_steps

    def done(self) -> bool:
        return self.recovered is not None and self.drift.stop_when_recovered

    def figures(self) -> dict[str, Any]:
        if not self.active:
            return {}
        return {"drifted": self.at_env_steps is not None, "alarms": len(self.alarms),
                "regressions": len(self.regressions), "recovered": self.recovered is not None}

    def summary(self) -> dict[str, Any]:
        at = self.at_env_steps
        after = [a["env_steps"] for a in self.alarms if at is not None and a["env_steps"] >= at]
        return {
            "set": dict(self.drift.set),
            "after_env_steps": self.drift.after_env_steps,
            "solved_at_env_steps": self.solved_at,
            "at_env_steps": at,
            "adapt": self.adapt.enabled,
            "alarms": [a["env_steps"] for a in self.alarms],
            "regressions": [r["env_steps"] for r in self.regressions],
            "adapted_at_env_steps": list(self.adapted_at),
            "detection_delay_env_steps": after[0] - at if after else None,
            "worst_eval_return": self.worst_eval,
            "recovered_at_env_steps": self.recovered["env_steps"] if self.recovered else None,
            "recovery_env_steps": self.recovery_env_steps,
            "recovered_version": self.recovered["version"] if self.recovered else None,
        }
