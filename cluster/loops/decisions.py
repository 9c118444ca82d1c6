"""A decision policy that learns from its rewards: Serve rank/reward -> replay -> learner -> gate -> live.

    DecisionUsersActor x n --HTTP rank--> DecisionServer (Serve) --decisions--> joiner --rows--> replay `decisions`
          |                                  ^ re-reads live                      | held back (ope)     | sample
          +------HTTP reward-----------------+                                    v                     v
                                        registry <--promote-- GateActor <--candidate-- TorchTrainer(DecisionObjective)

Version 1 is a policy that knows nothing (every weight 0: its first decisions explore evenly).
The joiner holds a share of the rewarded decisions out of training (`gate.ope.fraction`) and
hands them to the gate, whose `ope` stage (gate/kinds/decision.py) estimates each candidate's
value against live's on them.  The simulated users (actors/decision_users.py) play a stream of
core/decisions/simulate.py.  The loop's figures: live's version, the users' recent reward against
the uniform policy's, decisions served and rewards joined.
"""

from __future__ import annotations

import time
from typing import Any

import ray

from actors.decision_users import DecisionUsersActor
from cluster.errors import UserError
from cluster.gate_actor import GateActor, check_gate, gate_name
from cluster.loops.app_gate import AppAndGate
from cluster.learner_run import get_or
from cluster.loop import LoopBase, RunContext, mean_or_none, plain_event, round_or_none
from core.config.evolve import EvolveConfig
from core.decisions.files import policy_files
from core.decisions.policy import DecisionPolicy
from core.decisions.simulate import uniform_reward
from gate.slices import Slices
from learners.decisions import DecisionLearnConfig, DecisionObjective, DecisionSource
from learners.train_loop import LoopSpec
from serving.decision_app import deploy_decision_app
from serving.publisher import PUBLISHER_NAME, get_or_create_publisher

KIND = "decision_policy"  # the gate's adapter (gate/kinds/decision.py)


class DecisionsLoop(AppAndGate, LoopBase):
    def __init__(self, cfg: EvolveConfig, ctx: RunContext, name: str):
        super().__init__(cfg, ctx, name)
        self.dec = cfg.loops[name]
        self.joiner_name = f"evolve-decision-joiner:{name}"
        self.actors.counters = ("requests", "rewards_sent")
        self.gate = self.app = self.publisher = None
        self.gate_summary: dict[str, Any] = {}
        self.joiner_stats: dict[str, Any] = {}
        self.curve: list[dict[str, Any]] = []  # the users' recent reward over time

    def prepare(self) -> None:
        if not self.cfg.serving.enabled:
            raise UserError(f"loop {self.name!r} serves its policy: set serving.enabled: true")
        check_gate(self.dec.gate, KIND, f"loops.{self.name}")
        self.uniform = uniform_reward(self.dec.users.stream)

    # ---- start -------------------------------------------------------------------------
    def launch(self) -> None:
        dec, ctx = self.dec, self.ctx
        self.publisher = get_or_create_publisher(ctx.registry.uri)  # the gate publishes through it
        serving = dec.serving
        self.gate = GateActor.options(name=gate_name(dec.policy_id), get_if_exists=True).remote(
            ctx.registry.uri, KIND, {"reward_range": [serving.reward_min, serving.reward_max]},
            dec.gate.model_dump(mode="json"), PUBLISHER_NAME, seed=self.cfg.run.seed)
        first = ray.get(self._bootstrap())
        self.event("bootstrap", **plain_event(first))
        self.app = deploy_decision_app(ctx.registry.uri, dec.policy_id, serving, ctx.replay, dec.table("decisions"),
                                       app_name=self.name, joiner_name=self.joiner_name, auth=ctx.auth,
                                       num_cpus=self.cfg.serving.replica_num_cpus,
                                       gate_name=gate_name(dec.policy_id), slices=Slices.of(dec.gate))
        base = ctx.endpoints.get("http", f"http://{self.cfg.serving.host}:{self.cfg.serving.http_port}")
        self.app_url = f"{base}{self.app.route_prefix}"
        ctx.endpoints[f"{self.name}_rank"] = f"{self.app_url}/rank"
        ctx.endpoints[f"{self.name}_reward"] = f"{self.app_url}/reward"
        for i in range(dec.users.num_actors):
            self.actors.add(DecisionUsersActor.options(num_cpus=dec.users.actor_num_cpus,
                                                       resources=self.cfg.cluster.actor_resources).remote(
                self.app_url, dec.users.model_dump(mode="json"), f"{self.name}-users-{i}",
                seed=self.cfg.run.seed + 7919 * i, api_key=ctx.run_key))
        self._launch_learner(ctx.registry.latest(dec.policy_id, "live").version)

    def _bootstrap(self) -> ray.ObjectRef:
        """The gate makes version 1 live (weights all 0); a resumed run re-announces its live version."""
        dec = self.dec
        if self.ctx.registry.latest(dec.policy_id, "live") is not None:
            return self.gate.bootstrap.remote(dec.policy_id)
        weights, files = policy_files(DecisionPolicy(dec.model, dec.explore, dec.serving.max_actions))
        return self.gate.bootstrap.remote(dec.policy_id, weights=weights, files=files,
                                          metadata={"info": {"origin": "zeros"}})

    def _launch_learner(self, version: int) -> None:
        dec = self.dec
        setup = DecisionLearnConfig(dec.model, dec.explore, sync_every=dec.learning.sync_every, gate=self.gate,
                                    policy_id=dec.policy_id, parent_version=version, loop=self.name)
        self.launch_learner(LoopSpec(
            objective_factory=DecisionObjective, objective_config=setup,
            source=DecisionSource(self.ctx.replay, dec.table("decisions"), dec.learning.batch_size),
            report_every=dec.learning.report_every, eval_every=dec.learning.candidate_every,
            checkpoint_every=dec.learning.checkpoint_every, threads=1, seed=self.cfg.run.seed, eval_at_start=False))

    # ---- poll --------------------------------------------------------------------------
    def poll(self) -> dict[str, Any]:
        figures = super().poll()
        self.joiner_stats = get_or(self.app.joiner.stats.remote(), self.joiner_stats)
        self.forward_gate_events()
        self.gate_summary = get_or(self.gate.summary.remote(self.dec.policy_id), self.gate_summary)
        recent = mean_or_none(self.actors.values("recent_reward"))
        if recent is not None:
            self.curve.append({"t": round(time.time() - self.started, 1), "reward": round(recent, 4),
                               "decisions": int(self.actors.total("requests")),
                               "version": self.gate_summary.get("live_version")})
        return {
            "version": self.gate_summary.get("live_version"),
            "reward": round_or_none(recent, 3),
            "uniform": round(self.uniform, 3),
            "decisions": int(self.actors.total("requests")),
            "rewards": self.joiner_stats.get("joined", 0),
            "promoted": self.gate_summary.get("promoted", 0),
            "refused": self.gate_summary.get("refused", 0),
            **figures,
        }

    def figures(self) -> dict[str, Any]:
        return self.learner_figures()

    def _decision(self, d: dict[str, Any]) -> dict[str, Any]:
        """A gate decision with the evidence its stages recorded in the version's lineage."""
        out = {k: d.get(k) for k in ("version", "decision", "reason", "time")}
        try:
            gate = self.ctx.registry.get(self.dec.policy_id, d["version"]).gate or {}
        except Exception:  # a candidate refused before it had a version number
            gate = {}
        out["stages"] = gate.get("stages", [])
        return out

    # ---- the end -------------------------------------------------------------------------
    def summary(self) -> dict[str, Any]:
        g = self.gate_summary
        return {
            "policy_id": self.dec.policy_id,
            "stream": self.dec.users.stream,
            "uniform_reward": self.uniform,
            "live_version": g.get("live_version"),
            "promoted": g.get("promoted", 0),
            "refused": g.get("refused", 0),
            "decisions": [self._decision(d) for d in g.get("promotions", [])],
            "decisions_served": int(self.actors.total("requests")),
            "rewards_joined": self.joiner_stats.get("joined", 0),
            "defaulted": self.joiner_stats.get("defaulted", 0),
            "user_reward": mean_or_none(self.actors.values("mean_reward")),
            "reward_curve": self.curve[-600:],
            "elapsed_s": round(time.time() - self.started, 1),
        }
