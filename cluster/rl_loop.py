"""The RL evolution loop: rollout actors -> replay -> Ray Train Q learner -> publisher -> actors.

    RolloutActor x num_actors --transitions--> replay table <--sample-- TorchTrainer (DQN / tabular Q)
          ^                                                                   | every publish_every updates
          |                    PolicyPublisher (registry + object store) <----+
          +--- long-poll -------------+--------------+
                                      v              v
                         PolicyServer (Serve)    EvaluatorActor (greedy episodes -> eval events)

The driver (cluster.run) calls poll() every progress interval; this class
turns the components' figures into progress, events and the summary, and
says `done` once the greedy evaluation reaches the solve return.
"""

from __future__ import annotations

import time
from typing import Any

import numpy as np
import ray

from actors.evaluator import EvaluatorActor
from actors.rollout import RolloutActor
from cluster.errors import UserError
from cluster.loop_support import LearnerRun, get_or as _get, mean_or_none as _mean, round_or_none as _round
from core.config import EvolveConfig
from core.rl.models import PolicySpec, obs_width, spec_for_env
from learners.dqn import DQNObjective
from learners.q_learning import QSetup, QTableObjective
from learners.replay_source import ReplayTransitionSource
from learners.train_loop import LoopSpec, ProgressBoard
from serving.policy_server import deploy_policy_server, undeploy_policy_server
from serving.publisher import PolicySubscription, get_or_create_publisher


class RLLoop:
    def __init__(self, cfg: EvolveConfig, ctx: Any):
        self.cfg, self.ctx, self.rl = cfg, ctx, cfg.rl
        self.name = cfg.rl.name
        self.started = time.time()
        self.actors: list[Any] = []
        self.actor_stats: dict[int, dict[str, Any]] = {}
        self.evals: list[dict[str, Any]] = []
        self.learner: dict[str, Any] = {}
        self.steps_at: list[tuple[float, int]] = [(self.started, 0)]  # (time, env steps): to date the solve
        self.solved_at: dict[str, Any] | None = None
        self.publish_stats: dict[str, Any] = {}
        self.evaluator = self.publisher = self.board = self.learner_run = None
        self.resumed_from: int | None = None

    # ---- start -------------------------------------------------------------------------
    def start(self) -> None:
        rl, ctx = self.rl, self.ctx
        self.started = time.time()
        self.steps_at = [(self.started, 0)]
        self.spec = self._spec()
        self.solve_return = rl.solve_return if rl.solve_return is not None else _threshold(rl.env_id)
        marks = {}
        self.publisher = get_or_create_publisher(ctx.registry.uri)
        self._restore_live_version()
        marks["publisher_s"] = time.time()
        # The learner first: Ray Train's worker group takes the longest to come up, and
        # it does so while the actors fill the replay table and Serve deploys.
        self._start_learner()
        marks["learner_launched_s"] = time.time()
        spec = self.spec.to_dict()
        for i in range(rl.num_actors):
            actor_id = f"{self.name}-actor-{i}"
            self.actors.append(
                RolloutActor.options(num_cpus=rl.actor_num_cpus, name=f"evolve-{actor_id}", get_if_exists=True).remote(
                    rl.model_dump(mode="json"), spec, actor_id, ctx.replay,
                    PolicySubscription(self.publisher, rl.policy_id, actor_id), seed=rl.seed + 1000 * i,
                )
            )
        self.evaluator = EvaluatorActor.remote(
            rl.env_id, spec, rl.eval_episodes, PolicySubscription(self.publisher, rl.policy_id, None), seed=rl.seed + 10_000
        )
        marks["actors_launched_s"] = time.time()
        if self.cfg.serving.enabled:
            prefix = deploy_policy_server(self.publisher, [rl.policy_id], num_cpus=self.cfg.serving.replica_num_cpus)
            ctx.endpoints[f"{self.name}_act"] = f"{ctx.endpoints.get('http', '')}{prefix}/{rl.policy_id}/act"
            marks["serve_ready_s"] = time.time()
        ctx.run_dir.event(self.name, "startup", **{k: round(t - self.started, 3) for k, t in marks.items()})

    def _restore_live_version(self) -> None:
        """A resumed run (or a registry shared with an earlier one) starts acting with the live
        version instead of a random policy; one that does not fit this env's model is ignored."""
        from core.registry import RegistryError
        from core.rl.models import build_model

        pid = self.rl.policy_id
        if self.ctx.registry.latest(pid, "live") is None:
            return
        try:
            loaded = self.ctx.registry.load(pid, stage="live", like=build_model(self.spec).state_dict())
        except (RegistryError, ValueError) as exc:
            self.ctx.run_dir.event(self.name, "live_version_ignored", reason=str(exc))
            return
        ray.get(self.publisher.restore.remote(pid, loaded.weights, loaded.meta.version, self.spec.to_dict()))
        self.ctx.run_dir.event(self.name, "live_version_restored", version=loaded.meta.version)

    def _spec(self) -> PolicySpec:
        rl = self.rl
        try:
            spec = spec_for_env(rl.env_id, rl.algo, rl.hidden)
        except Exception as exc:  # unknown env id, wrong spaces: the user's config
            raise UserError(f"rl.env_id {rl.env_id!r}: {' '.join(str(exc).split())[:200]}") from None
        table = self.cfg.replay.tables[rl.table]
        if table.obs_dim != obs_width(spec):
            raise UserError(
                f"replay.tables.{rl.table}.obs_dim must be {obs_width(spec)} for {rl.env_id} (got {table.obs_dim})"
            )
        return spec

    def _start_learner(self) -> None:
        rl, learner = self.rl, self.cfg.learner
        table = self.cfg.replay.tables[rl.table]
        source = ReplayTransitionSource(self.ctx.replay, rl.table, learner.batch_size)
        setup = QSetup(rl=rl, spec=self.spec.to_dict(), lr=learner.lr, publisher=self.publisher,
                       priorities=source if table.sampler == "prioritized" else None)
        self.board = ProgressBoard.remote()
        spec = LoopSpec(
            objective_factory=DQNObjective if rl.algo == "dqn" else QTableObjective,
            objective_config=setup,
            source=source,
            max_steps=rl.max_updates,
            report_every=rl.updates_per_report,
            eval_every=rl.publish_every,
            checkpoint_every=learner.checkpoint_every,
            threads=1,  # small networks: one thread per worker is fastest
            seed=rl.seed,
            board=self.board,
        )
        self.learner_run = LearnerRun(self.name, spec, learner, self.ctx.run_dir)

    # ---- poll --------------------------------------------------------------------------
    def poll(self) -> dict[str, Any]:
        if self.learner_run is not None:
            self.learner_run.check()
        self._poll_actors()
        self._poll_learner()
        self._poll_evaluator()
        self.publish_stats = _get(self.publisher.stats.remote(self.rl.policy_id), self.publish_stats)
        steps = self.env_steps()
        now = time.time()
        self.steps_at.append((now, steps))
        rate = _rate(self.steps_at)
        last = self.evals[-1] if self.evals else {}
        return {
            "env_steps": steps,
            "episodes": sum(s.get("episodes", 0) for s in self.actor_stats.values()),
            "train_return": _round(_mean([s.get("mean_return") for s in self.actor_stats.values()])),
            "eval_return": _round(last.get("eval_return")),
            "version": self.publish_stats.get("live_version"),
            "steps_per_s": round(rate),
            # vector steps per replay add (the smallest over actors): at its floor while the
            # replay rate limiter paces the actors, as it does when the learner is the bottleneck
            "steps_per_add": min((s["steps_per_write"] for s in self.actor_stats.values() if "steps_per_write" in s),
                                 default=None),
            "updates": int(self.learner.get("updates", 0)),
            "loss": _round(self.learner.get("loss"), 4),
        }

    def _poll_actors(self) -> None:
        refs = {i: a.stats.remote() for i, a in enumerate(self.actors)}
        ready, _ = ray.wait(list(refs.values()), num_returns=len(refs), timeout=5.0)
        for i, ref in refs.items():
            if ref in ready:
                try:
                    stats = ray.get(ref)
                except ray.exceptions.RayActorError:
                    continue  # restarting after a crash: its last figures stand
                if stats.get("error"):
                    self.ctx.run_dir.event(self.name, "actor_error", actor=stats["actor_id"], error=stats["error"])
                prev = self.actor_stats.get(i, {})
                if prev and stats.get("incarnation") != prev.get("incarnation"):
                    # a restarted actor counts from zero again: keep what its earlier life did
                    stats["base_env_steps"] = prev.get("base_env_steps", 0) + prev.get("env_steps", 0)
                    stats["base_episodes"] = prev.get("base_episodes", 0) + prev.get("episodes", 0)
                else:
                    stats["base_env_steps"] = prev.get("base_env_steps", 0)
                    stats["base_episodes"] = prev.get("base_episodes", 0)
                self.actor_stats[i] = stats

    def env_steps(self) -> int:
        return sum(s.get("env_steps", 0) + s.get("base_env_steps", 0) for s in self.actor_stats.values())

    def _poll_learner(self) -> None:
        for rec in _get(self.board.drain.remote(), []):
            kind = rec.pop("kind")
            if kind == "progress":
                self.learner.update(updates=rec.get("step", 0), loss=rec.get("loss"),
                                    updates_per_s=rec.get("updates_per_s"), samples_per_s=rec.get("samples_per_s"))
                self.ctx.run_dir.event(self.name, "learner", **rec)
            elif kind == "resumed":
                self.resumed_from = rec.get("step")
                self.learner.setdefault("updates", self.resumed_from or 0)
                self.ctx.run_dir.event(self.name, "resumed", **rec)
            elif kind == "checkpoint":
                self.ctx.run_dir.event(self.name, "checkpoint", **rec)

    def _poll_evaluator(self) -> None:
        reply = _get(self.evaluator.results.remote(), {"results": [], "error": None})
        if reply.get("error"):
            raise RuntimeError(f"{self.name} evaluator failed: {reply['error']}")
        for result in reply["results"]:
            result["elapsed_s"] = round(result["time"] - self.started, 3)
            self.evals.append(result)
            self.ctx.run_dir.event(self.name, "eval", **result)
            if self.solved_at is None and result["eval_return"] >= self.solve_return:
                self.solved_at = result
                self.ctx.run_dir.event(self.name, "solved", **result, solve_return=self.solve_return)

    def done(self) -> bool:
        return (self.solved_at is not None and self.rl.stop_when_solved) or (
            self.learner_run is not None and self.learner_run.finished()
        )

    # ---- stop and summary ----------------------------------------------------------------
    def stop(self) -> None:
        if self.board is not None:
            self.board.request_stop.remote()
        if self.learner_run is not None:
            self.learner_run.join()  # the learner checkpoints before it returns
        if self.board is not None:
            self._poll_learner()
        stops = [a.stop.remote() for a in self.actors]
        if self.evaluator is not None:
            stops.append(self.evaluator.stop.remote())
            self._poll_evaluator()
        ray.wait(stops, num_returns=len(stops), timeout=10)
        self.publish_stats = _get(self.publisher.stats.remote(self.rl.policy_id), self.publish_stats) \
            if self.publisher is not None else {}
        for handle in [*self.actors, self.evaluator]:
            if handle is not None:
                ray.kill(handle, no_restart=True)
        if self.cfg.serving.enabled:
            undeploy_policy_server()

    def summary(self) -> dict[str, Any]:
        solved = self.solved_at
        best = max((e["eval_return"] for e in self.evals), default=None)
        return {
            "env_id": self.rl.env_id,
            "algo": self.rl.algo,
            "solved": solved is not None,
            "solve_return": getattr(self, "solve_return", None),
            "time_to_solve_s": solved["elapsed_s"] if solved else None,
            "env_steps_to_solve": _steps_at(self.steps_at, solved["time"]) if solved else None,
            "eval_return": self.evals[-1]["eval_return"] if self.evals else None,
            "best_eval_return": best,
            "versions_published": self.publish_stats.get("versions_published", 0),
            "live_version": self.publish_stats.get("live_version"),
            "publish_latency_p50_s": self.publish_stats.get("publish_latency_p50_s"),
            "publish_latency_p95_s": self.publish_stats.get("publish_latency_p95_s"),
            "env_steps": self.env_steps(),
            "episodes": sum(s.get("episodes", 0) + s.get("base_episodes", 0) for s in self.actor_stats.values()),
            "learner_updates": int(self.learner.get("updates", 0)),
            "resumed_from_update": self.resumed_from,
            "curve": [{k: e[k] for k in ("elapsed_s", "version", "eval_return")} for e in self.evals],
        }


def _threshold(env_id: str) -> float:
    import gymnasium as gym

    threshold = gym.spec(env_id).reward_threshold
    if threshold is None:
        raise UserError(f"{env_id} has no reward_threshold: set rl.solve_return")
    return float(threshold)


def _rate(points: list[tuple[float, int]], window_s: float = 15.0) -> float:
    now, steps = points[-1]
    older = [p for p in points if now - p[0] >= window_s] or points[:1]
    t0, s0 = older[-1]
    return (steps - s0) / (now - t0) if now > t0 else 0.0


def _steps_at(points: list[tuple[float, int]], when: float) -> int:
    """Env steps at `when`, linear between the two polls around it."""
    times = np.array([p[0] for p in points])
    steps = np.array([p[1] for p in points], dtype=float)
    return int(np.interp(when, times, steps))
