"""An RL loop: rollout actors -> replay -> Ray Train Q learner -> publisher -> actors.

    RolloutActor x num_actors --transitions--> replay table <--sample-- TorchTrainer (DQN / tabular Q)
          ^                                                                   | every publish_every updates
          |                    PolicyPublisher (registry + object store) <----+
          +--- long-poll -------------+--------------+
                                      v              v
                         PolicyServer (Serve)    EvaluatorActor (greedy episodes -> eval events)

Done once a version's greedy evaluation reaches the solve return and holds it
over `eval.confirm_episodes` more episodes.  With `drift`, the env's physics
change during the run and the loop is done once the greedy evaluation on the
changed env is back at the solve return (`RLDriftWatch`, cluster/loops/rl_drift.py,
with the adaptive layer of `adapt`).  With `gate.stages`, the learner's versions go
through a gate judged on `/act` traffic before they are live (`ActGate`,
cluster/loops/rl_gated.py).  The loop's Serve app is named after it and answers
under /v1/policies/<policy_id>.
"""

from __future__ import annotations

import time
from typing import Any

import numpy as np
import ray

from actors.evaluator import EvaluatorActor
from actors.rollout import RolloutActor
from cluster.errors import UserError
from cluster.learner_run import get_or
from cluster.loop import LoopBase, RunContext, mean_or_none, round_or_none
from cluster.loops.rl_drift import RLDriftWatch, check_drift
from cluster.loops.rl_clients import ClientEpisodes
from cluster.loops.rl_gated import ActGate
from core.config.evolve import EvolveConfig
from core.models.q import obs_width, spec_for_env
from learners.dqn import DQNObjective
from learners.q_learning import QSetup, QTableObjective
from learners.replay_source import ReplayTransitionSource
from learners.train_loop import LoopSpec
from core.config.rl import POLICIES_PREFIX
from serving.policy_server import deploy_policy_server, undeploy_policy_server
from serving.publisher import PolicySubscription, get_or_create_publisher


class RLLoop(LoopBase):
    def __init__(self, cfg: EvolveConfig, ctx: RunContext, name: str):
        super().__init__(cfg, ctx, name)
        self.rl = cfg.loops[name]
        self.actors.counters = ("env_steps", "episodes")
        self.evals: list[dict[str, Any]] = []
        self.steps_at: list[tuple[float, int]] = [(self.started, 0)]  # (time, env steps): to date the solve
        self.solved_at: dict[str, Any] | None = None
        self.publish_stats: dict[str, Any] = {}
        self.evaluator = self.publisher = None
        self.watch = RLDriftWatch(self.rl, self.event)
        self.act_gate = ActGate(cfg, self.rl, name, self.event)
        self.clients = ClientEpisodes(self.rl, name)

    def prepare(self) -> None:
        """The env's spaces fix the model and the table's obs width (taken from the env unless set)."""
        rl = self.rl
        try:
            self.spec = spec_for_env(rl.env_id, rl.algo, rl.hidden)
        except Exception as exc:  # unknown env id, spaces the algo cannot handle: the user's config
            raise UserError(f"loops.{self.name}.env_id {rl.env_id!r}: {' '.join(str(exc).split())[:200]}") from None
        table, width = self.cfg.replay.tables[rl.table], obs_width(self.spec)
        if table.obs_dim is None:
            table.obs_dim = width
        elif table.obs_dim != width:
            raise UserError(f"replay.tables.{rl.table}.obs_dim must be {width} for {rl.env_id} (got {table.obs_dim}; "
                            "leave it unset to take it from the env)")
        self.solve_return = rl.eval.solve_return if rl.eval.solve_return is not None else _threshold(rl.env_id, self.name)
        try:
            check_drift(rl)
        except ValueError as exc:
            raise UserError(f"loops.{self.name}.drift.set: {exc}") from None
        self.act_gate.check()

    # ---- start -------------------------------------------------------------------------
    def launch(self) -> None:
        rl, ctx = self.rl, self.ctx
        self.steps_at = [(self.started, 0)]
        marks = {}
        self.publisher = get_or_create_publisher(ctx.registry.uri)
        if not self._restore_live_version() and self.clients.active:
            self._publish_first_version()
        marks["publisher_s"] = time.time()
        # The learner first: Ray Train's worker group takes the longest to come up, and
        # it does so while the actors fill the replay table and Serve deploys.
        self._launch_learner()
        marks["learner_launched_s"] = time.time()
        spec = self.spec.to_dict()
        joiners = self.clients.start(ctx.replay)
        for i in range(rl.acting.num_actors if rl.experience != "clients" else 0):
            actor_id = f"{self.name}-actor-{i}"
            self.actors.add(RolloutActor.options(num_cpus=rl.acting.actor_num_cpus, name=f"evolve-{actor_id}",
                                                 resources=self.cfg.cluster.actor_resources,
                                                 get_if_exists=True).remote(
                rl.model_dump(mode="json"), spec, actor_id, ctx.replay,
                PolicySubscription(self.publisher, rl.policy_id, actor_id), seed=rl.seed + 1000 * i,
            ))
        self.evaluator = EvaluatorActor.options(resources=self.cfg.cluster.actor_resources).remote(
            rl.env_id, spec, rl.eval.episodes, PolicySubscription(self.publisher, rl.policy_id, None),
            seed=rl.seed + 10_000, solve_return=self.solve_return, confirm_episodes=rl.eval.confirm_episodes,
            drift=rl.drift.set if rl.drift.enabled else None,
        )
        self.watch.bind(self.actors, self.evaluator, ctx.replay, self.solve_return)
        marks["actors_launched_s"] = time.time()
        if self.cfg.serving.enabled:
            prefix = deploy_policy_server(self.publisher, [rl.policy_id], num_cpus=self.cfg.serving.replica_num_cpus,
                                          exploration={rl.policy_id: self.cfg.serving.exploration_for(rl.policy_id)},
                                          registry_uri=ctx.registry.uri, canary=self.act_gate.canary(), auth=ctx.auth,
                                          gates=self.act_gate.gates(), app_name=self.name,
                                          route_prefix=f"{POLICIES_PREFIX}/{rl.policy_id}", joiners=joiners)
            act_url = f"{ctx.endpoints.get('http', '')}{prefix}/act"
            ctx.endpoints[f"{self.name}_act"] = act_url
            self.act_gate.start_clients(act_url, api_key=ctx.run_key, verify=ctx.client_verify)
            marks["serve_ready_s"] = time.time()
        self.event("startup", **{k: round(t - self.started, 3) for k, t in marks.items()})

    def _restore_live_version(self) -> bool:
        """A resumed run (or a registry shared with an earlier one) starts acting with the live
        version instead of a random policy; one that does not fit this env's model is ignored.
        True when a version was restored."""
        from core.storage.registry import RegistryError
        from core.models.q import build_model

        pid = self.rl.policy_id
        if self.ctx.registry.latest(pid, "live") is None:
            return False
        try:
            loaded = self.ctx.registry.load(pid, stage="live", like=build_model(self.spec).state_dict())
        except (RegistryError, ValueError) as exc:
            self.event("live_version_ignored", reason=str(exc))
            return False
        ray.get(self.publisher.restore.remote(pid, loaded.weights, loaded.meta.version, self.spec.to_dict()))
        self.event("live_version_restored", version=loaded.meta.version)
        return True

    def _publish_first_version(self) -> None:
        """Clients need a policy to play before the learner has anything to learn from: a freshly
        initialised one (the seed's), as rollout actors start from."""
        from core.models.q_policy import QPolicy

        torch_seed(self.rl.seed)
        weights = {k: v.numpy() for k, v in QPolicy(self.spec).model.state_dict().items()}
        version = ray.get(self.publisher.publish.remote(self.rl.policy_id, weights, {"info": {"source": "initial"}},
                                                        spec=self.spec.to_dict()))
        self.event("first_version_published", version=version, why="clients play episodes from the start")

    def _launch_learner(self) -> None:
        rl = self.rl
        source = ReplayTransitionSource(self.ctx.replay, rl.table, rl.learning.batch_size)
        prioritized = self.cfg.replay.tables[rl.table].sampler == "prioritized"
        gate = self.act_gate.start_gate(self.ctx.registry.uri, self.spec.to_dict(), rl.seed)
        setup = QSetup(rl=rl, spec=self.spec.to_dict(), publisher=gate or self.publisher,
                       priorities=source if prioritized else None, loop=self.name)
        self.launch_learner(LoopSpec(
            objective_factory=DQNObjective if rl.algo == "dqn" else QTableObjective,
            objective_config=setup,
            source=source,
            max_steps=rl.learning.max_updates,
            report_every=rl.learning.updates_per_report,
            eval_every=rl.learning.publish_every,
            checkpoint_every=rl.learning.checkpoint_every,
            threads=1,  # small networks: one thread per worker is fastest
            seed=rl.seed,
        ))

    # ---- poll --------------------------------------------------------------------------
    def poll(self) -> dict[str, Any]:
        figures = super().poll()
        self._take_evals()
        if self.watch.active:
            self.watch.poll(figures["env_steps"], self.solved_at is not None)
        self.publish_stats = get_or(self.publisher.stats.remote(self.rl.policy_id), self.publish_stats)
        return {**figures, "eval_return": round_or_none(self.evals[-1]["eval_return"] if self.evals else None),
                "version": self.publish_stats.get("live_version"), **self.watch.figures(), **self.act_gate.poll(),
                **self.clients.poll()}

    def figures(self) -> dict[str, Any]:
        # env steps of the rollout actors and of the clients (each stored client step is one)
        steps = int(self.actors.total("env_steps")) + self.clients.figures_.get("client_steps", 0)
        self.steps_at.append((time.time(), steps))
        return {
            "env_steps": steps,
            "episodes": int(self.actors.total("episodes")),
            "train_return": round_or_none(mean_or_none(self.actors.values("mean_return"))),
            "steps_per_s": round(_rate(self.steps_at)),
            # vector steps per replay add (the smallest over actors): at its floor while the
            # replay rate limiter paces the actors, as it does when the learner is the bottleneck
            "steps_per_add": min((s for s in self.actors.values("steps_per_write") if s is not None), default=None),
            **self.learner_figures(),
        }

    def _take_evals(self) -> None:
        reply = get_or(self.evaluator.results.remote(), {"results": [], "error": None})
        if reply.get("error"):
            raise RuntimeError(f"{self.name} evaluator failed: {reply['error']}")
        for result in reply["results"]:
            result["elapsed_s"] = round(result["time"] - self.started, 3)
            self.evals.append(result)
            self.event("eval", **result)
            self.watch.on_eval(result, _steps_at(self.steps_at, result["time"]))
            if self.solved_at is None and result.get("confirmed"):
                self.solved_at = result
                self.event("solved", **result, solve_return=self.solve_return)
            elif result.get("confirmed") is False:
                self.event("unconfirmed", **result, solve_return=self.solve_return)
        for stats in self.actors.stats.values():
            if stats.get("error"):
                self.event("actor_error", actor=stats["actor_id"], error=stats["error"])

    def done(self) -> bool:
        if self.learner is not None and self.learner.finished():
            return True
        if self.rl.drift.enabled:  # solved before the change is half of what it measures
            return self.watch.done()
        return self.solved_at is not None and self.rl.eval.stop_when_solved

    # ---- stop and summary ----------------------------------------------------------------
    def finish(self) -> None:
        self.clients.stop()
        self.act_gate.stop()
        self.act_gate.poll()
        self.gate_summary = self.act_gate.summary()
        if self.evaluator is not None:
            ray.wait([self.evaluator.stop.remote()], timeout=10)
            self._take_evals()
        if self.publisher is not None:
            self.publish_stats = get_or(self.publisher.stats.remote(self.rl.policy_id), self.publish_stats)

    def teardown(self) -> None:
        self.act_gate.teardown()
        if self.evaluator is not None:
            ray.kill(self.evaluator, no_restart=True)
        if self.cfg.serving.enabled:
            undeploy_policy_server(self.name)
        self.clients.teardown()  # after Serve: no replica calls it any more

    def summary(self) -> dict[str, Any]:
        solved = self.solved_at
        return {
            "env_id": self.rl.env_id,
            "algo": self.rl.algo,
            "solved": solved is not None,
            "solve_return": getattr(self, "solve_return", None),
            "time_to_solve_s": solved["elapsed_s"] if solved else None,  # when the confirmation finished
            "env_steps_to_solve": _steps_at(self.steps_at, solved["time"]) if solved else None,
            "confirm_return": solved["confirm_return"] if solved else None,
            "unconfirmed": sum(1 for e in self.evals if e.get("confirmed") is False),
            "eval_return": self.evals[-1]["eval_return"] if self.evals else None,
            "best_eval_return": max((e["eval_return"] for e in self.evals), default=None),
            "versions_published": self.publish_stats.get("versions_published", 0),
            "live_version": self.publish_stats.get("live_version"),
            "publish_latency_p50_s": self.publish_stats.get("publish_latency_p50_s"),
            "publish_latency_p95_s": self.publish_stats.get("publish_latency_p95_s"),
            "env_steps": int(self.actors.total("env_steps")) + self.clients.figures_.get("client_steps", 0),
            "episodes": int(self.actors.total("episodes")) + self.clients.figures_.get("client_episodes", 0),
            "learner_updates": self.learner_figures()["updates"],
            "resumed_from_update": self.learner.resumed_from if self.learner else None,
            "curve": [{k: e[k] for k in ("elapsed_s", "version", "eval_return")} for e in self.evals],
            **({"drift": self.watch.summary()} if self.watch.active else {}),
            **getattr(self, "gate_summary", {}),
            **self.clients.summary(),
        }


def torch_seed(seed: int) -> None:
    import torch

    torch.manual_seed(seed)


def _threshold(env_id: str, loop: str) -> float:
    import gymnasium as gym

    threshold = gym.spec(env_id).reward_threshold
    if threshold is None:
        raise UserError(f"{env_id} has no reward_threshold: set loops.{loop}.eval.solve_return")
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
