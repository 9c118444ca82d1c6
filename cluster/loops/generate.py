"""A generator that learns from its users: Serve generate/feedback -> replay -> policy gradient -> gate -> live.

    GenerateUsersActor x n --HTTP generate--> GenerateServer (Serve, @serve.batch) --completions--> joiner
          |                                      ^                                          | joined rows
          +------HTTP feedback-------------------+                            replay `completions`
                                                 | re-reads live                            | sample
                                         registry <--promote-- GateActor <--candidate-- TorchTrainer(PolicyGradientObjective)

Version 1 is the causal LM the loop starts from: `model.start_policy`'s live (else newest)
version, a `clm` pretraining run's, else a GPT-2-shaped model with random weights.  The gate
(gate/kinds/generator.py) scores each candidate on held-out prompts by the judge's reward
(core/models/judge.py) and refuses one past the reward-hacking bounds (KL to version 1,
repetition, length).  The simulated users (actors/generate_users.py) rate completions by the
same judge.  The loop's figures: live's held-out reward and KL, the users' judged reward.
"""

from __future__ import annotations

import json
import time
from typing import Any

import numpy as np
import ray

from actors.generate_users import GenerateUsersActor
from cluster.errors import UserError
from cluster.gate_actor import GateActor, check_gate, gate_name
from cluster.loops.app_gate import AppAndGate
from cluster.learner_run import get_or
from cluster.loop import LoopBase, RunContext, mean_or_none, plain_event, round_or_none
from core.config.evolve import EvolveConfig
from core.data.completion_rewards import RewardRule
from core.data.prompts import review_prompts
from core.models.causal_lm import config_from_dict, context_length, load_causal_lm
from core.models.generator import build_causal_lm, causal_lm_files
from core.models.judge import ensure_judge
from core.storage.registry import PolicyRegistry
from core.models.tokenizer import check_causal_tokenizer, load_tokenizer, tokenizer_from_files, train_wordpiece
from learners.completion_source import CompletionSource
from learners.policy_gradient import PGSetup, PolicyGradientObjective
from learners.train_loop import LoopSpec
from serving.generate_app import deploy_generate_app
from serving.publisher import PUBLISHER_NAME, get_or_create_publisher

KIND = "text_generator"  # the gate's adapter (gate/kinds/generator.py)


class JudgeReward:
    """The judge as the gate's reward function: crosses Ray as a path, loads the judge where it runs."""

    def __init__(self, path: str | None):
        self.path, self._judge = path, None

    def __call__(self, prompts: list[str], completions: list[str]) -> np.ndarray:
        if self._judge is None:
            self._judge = ensure_judge(self.path)
        return self._judge.reward(prompts, completions)

    def __getstate__(self) -> dict[str, Any]:
        return {"path": self.path, "_judge": None}


class GenerateLoop(AppAndGate, LoopBase):
    def __init__(self, cfg: EvolveConfig, ctx: RunContext, name: str):
        super().__init__(cfg, ctx, name)
        self.gen = cfg.loops[name]
        self.joiner_name = f"evolve-generate-joiner:{name}"
        self.actors.counters = ("requests", "completions")
        self.gate = self.app = self.publisher = None
        self.gate_summary: dict[str, Any] = {}
        self.joiner_stats: dict[str, Any] = {}
        self.origin: dict[str, Any] = {}
        self.initial_kl: float | None = None

    def prepare(self) -> None:
        if not self.cfg.serving.enabled:
            raise UserError(f"loop {self.name!r} serves its model: set serving.enabled: true")
        check_gate(self.gen.gate, KIND, f"loops.{self.name}")
        self.prompts = review_prompts(**self.gen.prompts.model_dump())
        if not self.prompts.heldout:
            raise UserError(f"loops.{self.name}.prompts: no held-out prompts (raise heldout_share or max_heldout)")
        start, registry = self.gen.model.start_policy, self._start_registry()
        if start is not None and (registry is None or not registry.has(start)):
            where = self.gen.model.start_registry or "this run's registry"
            self.ctx.say(f"evolve: warning: no policy {start!r} in {where} (run `evolve run configs/clm.yaml` "
                         "first); starting from a random GPT-2-shaped model")
        ensure_judge(self.gen.users.judge_path)  # trained once and cached before any actor needs it

    # ---- start -------------------------------------------------------------------------
    def launch(self) -> None:
        gen, ctx = self.gen, self.ctx
        self.publisher = get_or_create_publisher(ctx.registry.uri)  # the gate publishes through it
        self.gate = GateActor.options(name=gate_name(gen.policy_id), get_if_exists=True).remote(
            ctx.registry.uri, KIND,
            {"prompts": self.prompts.heldout, "reward_fn": JudgeReward(gen.users.judge_path),
             "samples": gen.gate.samples.model_dump(mode="json"),
             "rule": RewardRule.from_section(gen.learning).__dict__},
            gen.gate.model_dump(mode="json"), PUBLISHER_NAME, seed=self.cfg.run.seed)
        first = ray.get(self._bootstrap())
        self.event("bootstrap", **plain_event(first), origin=self.origin)
        self._deploy_app()
        self._add_users()
        live = ctx.registry.load(gen.policy_id, stage="live", as_numpy=True)
        self._launch_learner(dict(live.weights), dict(live.files), live.meta.version)

    def _bootstrap(self) -> ray.ObjectRef:
        """The gate makes the starting model live (v1); a resumed run re-announces its live version."""
        gen = self.gen
        if self.ctx.registry.latest(gen.policy_id, "live") is not None:
            return self.gate.bootstrap.remote(gen.policy_id)
        start, registry = gen.model.start_policy, self._start_registry()
        if start is not None and registry is not None and registry.has(start):
            version = (registry.latest(start, "live") or registry.latest(start)).version
            model, tokenizer = load_causal_lm(registry, start, version=version)
            self.origin = {"policy": start, "version": version, "registry": registry.uri}
        else:
            m = gen.model
            tokenizer = load_tokenizer(m.tokenizer, check=check_causal_tokenizer) if m.tokenizer else \
                train_wordpiece(self.prompts.traffic, vocab_size=m.vocab_size, min_frequency=1)
            model = build_causal_lm(tokenizer, m.n_layer, m.n_embd, m.n_head, m.n_positions, seed=m.seed)
            self.origin = {"policy": None, "built": {"n_layer": m.n_layer, "n_embd": m.n_embd}}
        weights, files = causal_lm_files(model, tokenizer)
        return self.gate.bootstrap.remote(gen.policy_id, weights={k: v.numpy() for k, v in weights.items()},
                                          files=files, metadata={"info": {"origin": self.origin}})

    def _start_registry(self) -> PolicyRegistry | None:
        uri = self.gen.model.start_registry
        if uri is None:
            return self.ctx.registry
        try:
            return PolicyRegistry(uri, create=False)
        except Exception:  # no such registry: said once by prepare(), then a random start
            return None

    def _deploy_app(self) -> None:
        gen, ctx = self.gen, self.ctx
        self.app = deploy_generate_app(ctx.registry.uri, gen.policy_id, gen.serving, ctx.replay,
                                       gen.table("completions"), app_name=self.name, joiner_name=self.joiner_name,
                                       num_cpus=self.cfg.serving.replica_num_cpus,
                                       num_gpus=self.cfg.serving.replica_num_gpus, auth=ctx.auth)
        base = ctx.endpoints.get("http", f"http://{self.cfg.serving.host}:{self.cfg.serving.http_port}")
        ctx.endpoints[f"{self.name}_generate"] = f"{base}{gen.serving.route_prefix}"
        ctx.endpoints[f"{self.name}_feedback"] = f"{base}{gen.serving.route_prefix}/feedback"

    def _add_users(self) -> None:
        gen, ctx = self.gen, self.ctx
        base = ctx.endpoints.get("http", f"http://{self.cfg.serving.host}:{self.cfg.serving.http_port}")
        n = gen.users.num_actors
        for i in range(n):
            self.actors.add(GenerateUsersActor.options(num_cpus=gen.users.actor_num_cpus,
                                                       resources=self.cfg.cluster.actor_resources).remote(
                base, gen.users.model_dump(mode="json"), gen.prompts.model_dump(mode="json"),
                f"{self.name}-users-{i}", seed=self.cfg.run.seed + i, shard=(i, n), api_key=ctx.run_key,
                verify=ctx.client_verify, generate_path=gen.serving.route_prefix,
            ))

    def _launch_learner(self, weights: dict[str, Any], files: dict[str, bytes], version: int) -> None:
        gen = self.gen
        tokenizer = tokenizer_from_files({k: v for k, v in files.items() if k != "config.json"},
                                         check=check_causal_tokenizer)
        source = CompletionSource(self.ctx.replay, gen.table("completions"), gen.learning.batch_size,
                                  RewardRule.from_section(gen.learning), pad_id=tokenizer.pad_token_id or 0,
                                  context=context_length(config_from_dict(json.loads(files["config.json"]))))
        setup = PGSetup(section=gen, weights=weights, files=files, parent_version=version, gate=self.gate,
                        seed=self.cfg.run.seed, loop=self.name)
        self.launch_learner(LoopSpec(
            objective_factory=PolicyGradientObjective,
            objective_config=setup,
            source=source,
            report_every=gen.learning.report_every,
            eval_every=gen.learning.candidate_every,
            checkpoint_every=gen.learning.checkpoint_every,
            threads=max(1, int(self.cfg.learner.cpus_per_worker)),
            seed=self.cfg.run.seed,
            eval_at_start=False,
        ))

    # ---- poll --------------------------------------------------------------------------
    def poll(self) -> dict[str, Any]:
        figures = super().poll()
        self.joiner_stats = get_or(self.app.joiner.stats.remote(), self.joiner_stats)
        self.forward_gate_events()
        self.gate_summary = get_or(self.gate.summary.remote(self.gen.policy_id), self.gate_summary)
        return {
            "version": self.gate_summary.get("live_version"),
            "reward": round_or_none(self.gate_summary.get("heldout_accuracy"), 3),
            "kl": round_or_none(self._live_kl(), 3),
            "user_reward": round_or_none(mean_or_none(self.actors.values("recent_reward")), 3),
            "completions": int(self.actors.total("completions")),
            "feedback": self.joiner_stats.get("joined", 0),
            "promoted": self.gate_summary.get("promoted", 0),
            "refused": self.gate_summary.get("refused", 0),
            **figures,
        }

    def figures(self) -> dict[str, Any]:
        return self.learner_figures()

    def _live_kl(self) -> float | None:
        """Live's KL to the reference as the bounds stage measured it when it promoted live."""
        live = self.gate_summary.get("live_version")
        if live is None:
            return None
        meta = self.ctx.registry.get(self.gen.policy_id, live)
        for stage in (meta.gate or {}).get("stages", []):
            if stage.get("stage") == "bounds":
                return (stage.get("candidate") or {}).get("kl")
        return 0.0 if live == 1 else None  # version 1 is the reference itself

    # ---- the end -------------------------------------------------------------------------
    def summary(self) -> dict[str, Any]:
        g = self.gate_summary
        return {
            "policy_id": self.gen.policy_id,
            "origin": self.origin,
            "live_version": g.get("live_version"),
            "initial_reward": g.get("initial_heldout_accuracy"),
            "reward": g.get("heldout_accuracy"),
            "kl": self._live_kl(),
            "max_kl": self.gen.gate.bounds.max_kl,
            "promoted": g.get("promoted", 0),
            "refused": g.get("refused", 0),
            "decisions": [{k: d.get(k) for k in ("version", "decision", "reason", "heldout_accuracy", "time")}
                          for d in g.get("promotions", [])],
            "completions": int(self.actors.total("completions")),
            "feedback": self.joiner_stats.get("joined", 0),
            "user_reward": mean_or_none(self.actors.values("mean_reward")),
            "heldout_prompts": len(self.prompts.heldout),
            "elapsed_s": round(time.time() - self.started, 1),
        }
