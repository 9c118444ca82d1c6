"""An RL loop's gate on `/act` traffic (its `gate.stages`): its actors, events and figures.

    GateActor (cluster/gate_actor.py, the q_policy kind)  <- the learner publishes to it instead of
         ^ evidence: episodes, unservable versions           the publisher; live on evidence, through
         |                                                    PolicyPublisher
    ActClientActor (actors/act_traffic.py) -> POST /v1/policies/<id>/act, canary rows sticky per client

Without stages nothing here runs and the learner publishes straight to the
publisher, as before.  `traffic.enabled` starts the clients alone.
"""

from __future__ import annotations

from typing import Any, Callable

import ray

from actors.act_traffic import ActClientActor
from cluster.errors import UserError
from cluster.learner_run import get_or
from cluster.gate_actor import GateActor, check_gate, gate_name
from core.config.evolve import EvolveConfig
from core.config.rl import RLSection
from serving.publisher import PUBLISHER_NAME

KIND = "q_policy"  # the gate's adapter (gate/kinds/q_policy.py)


class ActGate:
    def __init__(self, cfg: EvolveConfig, rl: RLSection, name: str, event: Callable[..., None]):
        self.cfg, self.rl, self.name, self.event = cfg, rl, name, event
        self.gated = bool(rl.gate.stages)
        self.gate = self.clients = None
        self.figures_: dict[str, Any] = {}
        self.client_stats: dict[str, Any] = {}

    def check(self) -> tuple[float, float] | None:
        """The return range (None when ungated); a gate without Serve is the user's config error."""
        if not (self.gated or self.rl.traffic.enabled):
            return None
        if not self.cfg.serving.enabled:
            raise UserError(f"loops.{self.name}.gate.stages and .traffic need serving.enabled: true (the gate "
                            "judges /act traffic)")
        check_gate(self.rl.gate, KIND, f"loops.{self.name}")
        if self.rl.gate.return_range is not None:
            return tuple(self.rl.gate.return_range)
        import gymnasium as gym

        steps = gym.spec(self.rl.env_id).max_episode_steps
        if steps is None:
            raise UserError(f"{self.rl.env_id} has no max_episode_steps: set loops.{self.name}.gate.return_range")
        return 0.0, float(steps)

    def start_gate(self, registry_uri: str, spec: dict, seed: int) -> Any | None:
        """The learner's publisher: the gate actor, or None (publish straight to the publisher)."""
        if not self.gated:
            return None
        rl = self.rl
        kind_args = {"spec": spec, "exploration": self.cfg.serving.exploration_for(rl.policy_id).model_dump(),
                     "return_range": self.check()}
        self.gate = GateActor.options(name=gate_name(rl.policy_id), get_if_exists=True, num_cpus=0).remote(
            registry_uri, KIND, kind_args, rl.gate.model_dump(mode="json"), PUBLISHER_NAME, seed=seed)
        return self.gate

    def gates(self) -> dict[str, Any] | None:
        """The policy server's line to the gate: told when a version cannot answer (None when ungated)."""
        return {self.rl.policy_id: self.gate} if self.gate is not None else None

    def canary(self) -> dict[str, float] | None:
        return {self.rl.policy_id: self.rl.gate.canary.fraction} if "canary" in self.rl.gate.stages else None

    def start_clients(self, act_url: str, api_key: str | None = None, verify: str | bool = True) -> None:
        """`api_key`: the run's own key when serving.auth is on (None when off)."""
        rl = self.rl
        # with client episodes alone the gate judges on the clients' own; simulated ones then only when asked
        if not (rl.traffic.enabled or (rl.gate.stages and rl.experience != "clients")):
            return
        self.clients = ActClientActor.options(num_cpus=rl.traffic.num_cpus,
                                              resources=self.cfg.cluster.actor_resources).remote(
            act_url, rl.env_id, rl.traffic.model_dump(), self.gate or _Nowhere.remote(), rl.policy_id,
            name=f"{self.name}-act", api_key=api_key, verify=verify)

    def poll(self) -> dict[str, Any]:
        if self.clients is not None:
            self.client_stats = get_or(self.clients.stats.remote(), self.client_stats)
            if self.client_stats.get("error"):
                self.event("act_clients_error", error=self.client_stats["error"])
        if self.gate is not None:
            for ev in get_or(self.gate.drain_events.remote(), []):
                ev.pop("time", None)
                self.event(ev.pop("event", "rl_gate"), **ev)
            s = get_or(self.gate.summary.remote(), {})
            trial = s.get("in_flight") or {}
            self.figures_ = {**{k: s.get(k) for k in ("promoted", "refused", "aborted", "dropped")},
                             "canary": trial.get("version") if trial.get("stage") == "canary" else None}
        return {**self.figures_, **({"act_episodes": self.client_stats.get("episodes")} if self.clients else {})}

    def summary(self) -> dict[str, Any]:
        out: dict[str, Any] = {}
        if self.gate is not None:
            summary = get_or(self.gate.summary.remote(), {})
            # the stage order, and what each stage holds at the end under its own key
            out["gate"] = {**summary, "stages": self.rl.gate.stages, "stage_figures": summary.get("stages", {})}
        if self.client_stats:
            out["act_clients"] = self.client_stats
        return out

    def stop(self) -> None:
        if self.clients is not None:
            ray.wait([self.clients.stop.remote()], timeout=10)
        if self.gate is not None:
            ray.wait([self.gate.close.remote(self.rl.policy_id)], timeout=30)

    def teardown(self) -> None:
        for handle in (self.clients, self.gate):
            if handle is not None:
                ray.kill(handle, no_restart=True)


@ray.remote(num_cpus=0)
class _Nowhere:
    """Where an ungated loop's clients send episodes (`rl.traffic.enabled` alone)."""

    def evidence(self, policy_id: str, items: list) -> None:
        pass
