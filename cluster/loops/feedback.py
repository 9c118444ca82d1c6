"""A live feedback loop: Serve predict/feedback -> replay -> online learner -> gate -> live on every replica.

    TrafficActor x n --HTTP predict--> FeedbackServer (Serve, @serve.batch) --events--> FeedbackJoiner
          |                                 ^                                          |  joined rows     | evidence
          +------HTTP feedback--------------+                         replay `feedback` (+ `text`)     | (one call)
                                            | long-poll                                | sample        v
                                   PolicyPublisher <--promote-- GateActor <--candidate-- TorchTrainer(OnlineObjective)

Version 1 is the starting classifier (core.models.classifier_start).  The joiner
hands the gate (gate/, in its actor cluster/gate_actor.py) every kept feedback as
evidence: the gate rolls back when the version before live answers live's labeled feedback
better (else a shared drop is a world change) and, with the loop's `adapt`, its drift detector
boosts the learner while the data changes.
This loop reports what the gate decided, and for a grouped stream (domain
after domain) the accuracy matrix of the continual-learning metrics.  Done
once live reaches `stop_accuracy`.  The loop's Serve app and joiner are named
after it; its routes answer under its `serving.route_prefix`.
"""

from __future__ import annotations

import time
from typing import Any

import numpy as np
import ray

from actors.traffic_actor import TrafficActor
from cluster.errors import UserError
from cluster.learner_run import get_or
from cluster.loops.rebase import EncoderFollow
from cluster.loop import LoopBase, RunContext, mean_or_none, plain_event, quietly, round_or_none
from core.stats.continual import AccuracyMatrix
from core.models.classifier_start import StartingClassifier, starting_classifier
from core.config.evolve import EvolveConfig
from core.config.memory import raised_memory
from core.config.novelty import novelty_policy_id
from core.data.labeled import LabeledData
from core.stats.learning_speed import events_to_fraction
from core.models.classifier import ClassifierError
from core.data.corpus import CorpusError
from learners.feedback_source import FeedbackSource
from learners.online import OnlineObjective, OnlineSetup, split_batch
from learners.train_loop import LoopSpec
from cluster.gate_actor import GateActor, check_gate, gate_name
from cluster.waiting import feedback_wait
from gate.slices import Slices
from serving.feedback_app import deploy_feedback_app, stop_joiner, undeploy_feedback_app
from serving.join import JOINER_NAME
from serving.publisher import PUBLISHER_NAME, get_or_create_publisher

KIND = "text_classifier"  # the gate's adapter (gate/kinds/text.py)


class FeedbackLoop(LoopBase):
    def __init__(self, cfg: EvolveConfig, ctx: RunContext, name: str):
        super().__init__(cfg, ctx, name)
        self.fb = cfg.loops[name]
        self.joiner_name = f"{JOINER_NAME}:{name}"
        self.actors.counters = ("predicts",)
        self.gate_summary: dict[str, Any] = {}
        self.joiner_stats: dict[str, Any] = {}
        self.gate = self.publisher = self.app = None
        self.origin: dict[str, Any] = {}
        self.reached_at: float | None = None
        self.adaptations = 0
        self.alarms: dict[str, int] = {}  # per signal, acted on or not
        self.matrix: AccuracyMatrix | None = None  # a grouped stream's R[i][j]
        self.group: str | None = None  # where the traffic stream is
        self.unrecorded: list[str] = []  # groups the stream left whose row the gate has not given yet
        self.measured_live: int | None = None  # the live version the matrix last measured
        self.encoders = EncoderFollow(self)  # an MLM loop of the run to re-base onto (model.encoder_loop)

    def prepare(self) -> None:
        if not self.cfg.serving.enabled:
            raise UserError(f"loop {self.name!r} serves its model: set serving.enabled: true")
        check_gate(self.fb.gate, KIND, f"loops.{self.name}")
        try:
            self.data: LabeledData = self.fb.data.load()
        except CorpusError as exc:
            raise UserError(f"loops.{self.name}.data: {exc}") from None
        self.encoders.decide()
        if self.fb.data.order == "grouped":
            self.matrix = AccuracyMatrix(self.fb.data.group_order or sorted(set(self.data.groups)))

    # ---- start -------------------------------------------------------------------------
    def launch(self) -> None:
        """Everything that takes tens of seconds on a small machine overlaps: the traffic actors'
        start, the learner's workers (from the starting classifier of a new policy), the gate
        scoring and publishing version 1, and the Serve app (its replicas answer 503 until a
        version is live, and the traffic waits for that)."""
        fb, ctx = self.fb, self.ctx
        self._add_traffic()
        self.publisher = get_or_create_publisher(ctx.registry.uri)
        self.gate = GateActor.options(name=gate_name(fb.policy_id), get_if_exists=True).remote(
            ctx.registry.uri, KIND, {"data": fb.data.model_dump(mode="json")}, fb.gate.model_dump(mode="json"),
            PUBLISHER_NAME, adapt=fb.adapt.model_dump(mode="json"),
        )
        start = self._starting_classifier() if ctx.registry.latest(fb.policy_id, "live") is None else None
        early = start is not None and not ctx.registry.has(fb.policy_id)  # it becomes v1, the learner's parent
        if early:
            self._launch_learner(start.bundle.files(), _numpy(start.bundle.weights()), version=1,
                                 encoders=self.encoders.feed())
        booting = self._bootstrap(start)
        self._deploy_app()
        first = ray.get(booting)
        if early and first.get("version") != 1:  # one run per storage makes this a bug
            raise RuntimeError(f"loop {self.name!r}: the starting classifier became v{first.get('version')}, not v1")
        self.event("bootstrap", **plain_event(first), origin=self.origin)
        if self.matrix is not None:
            self.matrix.record_baseline(ray.get(self.gate.group_accuracy.remote(fb.policy_id)))
        if not early:
            live = ctx.registry.load(fb.policy_id, stage="live", as_numpy=True)
            self._launch_learner(dict(live.files), dict(live.weights), version=live.meta.version,
                                 encoders=self.encoders.feed(live.meta.info))

    def _deploy_app(self) -> None:
        fb, ctx = self.fb, self.ctx
        watched = [n for n, loop in self.cfg.loops_of("novelty").items() if loop.watch == self.name]
        novelty = novelty_policy_id(fb.policy_id) if watched else None
        self.app = deploy_feedback_app(self.publisher, ctx.registry.uri, fb, ctx.replay,
                                       app_name=self.name, route_prefix=fb.serving.route_prefix,
                                       joiner_name=self.joiner_name,
                                       num_cpus=self.cfg.serving.replica_num_cpus,
                                       num_gpus=self.cfg.serving.replica_num_gpus, gate_name=gate_name(fb.policy_id),
                                       slices=Slices.of(fb.gate, fb.adapt), novelty_policy_id=novelty,
                                       exploration=self.cfg.serving.exploration_for(fb.policy_id), auth=ctx.auth)
        base = ctx.endpoints.get("http", f"http://{self.cfg.serving.host}:{self.cfg.serving.http_port}")
        ctx.endpoints[f"{self.name}_predict"] = f"{base}{self.app.route_prefix}/predict"
        ctx.endpoints[f"{self.name}_feedback"] = f"{base}{self.app.route_prefix}/feedback"
        if "grpc" in ctx.endpoints:
            ctx.endpoints[f"{self.name}_grpc"] = ctx.endpoints["grpc"]

    def _add_traffic(self) -> None:
        fb, ctx, prefix = self.fb, self.ctx, self.fb.serving.route_prefix
        base = ctx.endpoints.get("http", f"http://{self.cfg.serving.host}:{self.cfg.serving.http_port}")
        n = fb.traffic.num_actors
        for i in range(n):
            self.actors.add(TrafficActor.options(num_cpus=fb.traffic.actor_num_cpus,
                                                 resources=self.cfg.cluster.actor_resources).remote(
                base, fb.traffic.model_dump(mode="json"), fb.data.model_dump(mode="json"), f"{self.name}-traffic-{i}",
                seed=self.cfg.run.seed + i, shard=(i, n), api_key=ctx.run_key, verify=ctx.client_verify,
                predict_path=f"{prefix}/predict", feedback_path=f"{prefix}/feedback", ready_path=f"{prefix}/healthz",
            ))

    def _starting_classifier(self) -> StartingClassifier:
        try:
            start = starting_classifier(self.fb, self.data, seed=self.cfg.run.seed,
                                        encoder_files=self.encoders.encoder_files())
        except ClassifierError as exc:
            raise UserError(f"loops.{self.name}: cannot build the starting classifier: {exc}") from None
        self.origin = start.origin
        if start.missing_encoder:
            self.event("no_encoder", missing=start.missing_encoder)
            self.ctx.say(f"evolve: warning: no encoder {start.missing_encoder} "
                         "(run `evolve pretrain configs/mlm.yaml` first); starting from a random init")
        return start

    def _bootstrap(self, start: StartingClassifier | None) -> ray.ObjectRef:
        """The gate publishes the starting classifier (v1 in a new registry); with no `start` (a
        resumed run, a shared registry) it re-announces the live version."""
        pid = self.fb.policy_id
        if start is None:
            return self.gate.bootstrap.remote(pid)
        meta = {"info": {"origin": self.origin}}
        return self.gate.bootstrap.remote(pid, weights=_numpy(start.bundle.weights()), files=start.bundle.files(),
                                          metadata=meta)

    def _launch_learner(self, files: dict[str, bytes], weights: dict[str, Any], version: int,
                        encoders: Any = None) -> None:
        fb = self.fb
        fresh, _ = split_batch(fb.learning.batch_size, fb.learning.rehearsal)
        setup = OnlineSetup(fb=fb, files=files, weights=weights, labels=self.data.labels,
                            parent_version=version, gate=self.gate,
                            heldout=self.data.heldout[:fb.learning.curve_rows], seed=self.cfg.run.seed, loop=self.name,
                            groups=self._input_groups(), encoders=encoders)
        self.launch_learner(LoopSpec(
            objective_factory=OnlineObjective,
            objective_config=setup,
            source=FeedbackSource(self.ctx.replay, fb.table("feedback"), fresh, catch_up=fb.catch_up_batches()),
            report_every=fb.learning.report_every,
            eval_every=fb.learning.candidate_every,
            checkpoint_every=fb.learning.checkpoint_every,
            threads=max(1, int(self.cfg.learner.cpus_per_worker)),
            seed=self.cfg.run.seed,
            eval_at_start=False,  # the gate's score of the starting version is the curve's "before"
        ))

    def _input_groups(self) -> dict[Any, str] | None:
        """Each traffic input's group, for a rehearsal buffer balanced over groups."""
        if self.fb.learning.memory.buffer != "balanced" or self.data.groups is None:
            return None
        return {text: group for (text, _), group in zip(self.data.train, self.data.groups)}

    # ---- poll --------------------------------------------------------------------------
    def poll(self) -> dict[str, Any]:
        figures = super().poll()
        self.joiner_stats = get_or(self.app.joiner.stats.remote(), self.joiner_stats)
        self._take_gate_events()
        self._follow_groups()
        live, acc = self.gate_summary.get("live_version"), self.gate_summary.get("heldout_accuracy")
        if self.reached_at is None and acc is not None and self.fb.stop_accuracy is not None \
                and acc >= self.fb.stop_accuracy:
            self.reached_at = time.time()
            self.event("reached", heldout_accuracy=acc, version=live, elapsed_s=round(self.reached_at - self.started, 3))
        return {
            "predicts": int(self.actors.total("predicts")),
            "feedback": self.joiner_stats.get("joined", 0),
            "online_acc": round_or_none(mean_or_none(self.actors.values("recent_accuracy")), 3),
            "heldout_acc": round_or_none(acc, 3),
            "version": live,
            "promoted": self.gate_summary.get("promoted", 0),
            "refused": self.gate_summary.get("refused", 0),
            **({"adapt": self.adaptations} if self.fb.adapt.enabled else {}),
            **self.encoders.follow(self.learner.figures if self.learner is not None else {}),
            **({"world": len(changes)} if (changes := self.gate_summary.get("world_changes")) else {}),
            **({"group": self.group, **self.matrix.headline()} if self.matrix is not None else {}),
            **figures,
            "wait": self._waiting(figures),
        }

    def _waiting(self, figures: dict[str, Any]) -> str | None:
        fresh, _ = split_batch(self.fb.learning.batch_size, self.fb.learning.rehearsal)
        learning = self.fb.learning
        return feedback_wait(learner_up=bool(self.learner is not None and self.learner.heard),
                             updates=figures.get("updates", 0), joined=self.joiner_stats.get("joined", 0),
                             fresh_rows=fresh, candidates=(learning.first_candidate, learning.candidate_every),
                             gate=self.gate_summary, section=self.fb.gate)

    def figures(self) -> dict[str, Any]:
        return self.learner_figures()

    def _take_gate_events(self) -> None:
        for ev in get_or(self.gate.drain_events.remote(), []):
            kind = ev.pop("event", "gate")
            if kind == "adapt":
                self.adaptations += bool(ev.get("actions"))
                self.alarms[ev.get("signal", "?")] = self.alarms.get(ev.get("signal", "?"), 0) + 1
                self._say_remember(ev)
            self.event(kind, **plain_event(ev))
        self.gate_summary = get_or(self.gate.summary.remote(self.fb.policy_id), self.gate_summary)

    def _say_remember(self, ev: dict[str, Any]) -> None:
        """A refusal streak during a drift raised the learner's memory: one line saying so."""
        level = next((a.get("level") for a in ev.get("actions") or [] if a.get("action") == "remember"), None)
        if level is None:
            return
        learning = self.fb.learning
        before = (learning.rehearsal, learning.memory.distill)
        after = raised_memory(*before, self.fb.adapt.refusals, int(level))
        was = raised_memory(*before, self.fb.adapt.refusals, int(level) - 1)
        self.ctx.say(f"evolve: {self.name}: {ev.get('at')} candidates refused in a row during a drift: rehearsal "
                     f"{was[0]:.2f} -> {after[0]:.2f}, distillation {was[1]:.2f} -> {after[1]:.2f} (level {level})")

    def _follow_groups(self) -> None:
        """When the stream leaves a group (first pass only), score live on every group: a row of R."""
        if self.matrix is None:
            return
        now = self.actors.stats.get(0, {}).get("group")
        if now is not None and now != self.group:
            if self.group is not None:
                self.unrecorded.append(self.group)
            self.event("group_change", group=now, left=self.group, feedback_events=self.joiner_stats.get("joined", 0))
            self.group = now
            self.matrix.enter(now)
        self.unrecorded = [g for g in self.unrecorded if not self._record_group(g)]
        self._measure_live()

    def _measure_live(self) -> None:
        """Every change of live is measured on every group: ACC and BWT follow it, and a dip of an
        old group inside a later one shows (the stability gap)."""
        live = self.gate_summary.get("live_version")
        if live is None or live == self.measured_live or self.group is None:
            return
        accuracy = get_or(self.gate.group_accuracy.remote(self.fb.policy_id, live), {}, timeout_s=30)
        if not accuracy:
            return
        self.measured_live = live
        self.matrix.observe(accuracy)
        self.event("continual", version=live, group=self.group, group_accuracy=accuracy,
                   **_figures(self.matrix.metrics()))

    def _record_group(self, group: str) -> bool:
        """A row of R for `group` (the live version now); False: the gate did not answer in time."""
        if self.matrix.index[group] in self.matrix.rows:
            return True  # a stream that cycles: the first pass defines the matrix
        accuracy = get_or(self.gate.group_accuracy.remote(self.fb.policy_id), {}, timeout_s=30)
        if not accuracy:
            return False
        self.matrix.record(group, accuracy)
        self.event("continual", after_group=group, group_accuracy=accuracy,
                   version=self.gate_summary.get("live_version"), **_figures(self.matrix.metrics()))
        return True

    def done(self) -> bool:
        return self.reached_at is not None

    # ---- stop and summary ----------------------------------------------------------------
    def finish(self) -> None:
        if self.gate is not None:
            ray.wait([self.gate.close.remote(self.fb.policy_id)], timeout=30)  # no experiment outlives the run
            self._take_gate_events()
            if self.matrix is not None and self.group is not None:
                self._measure_live()  # a version made live since the last poll
                for group in [*self.unrecorded, self.group]:  # where the run ended, last
                    self._record_group(group)
        if self.app is not None:
            self.joiner_stats = get_or(self.app.joiner.stats.remote(), self.joiner_stats)

    def teardown(self) -> None:
        quietly(lambda: undeploy_feedback_app(self.name), f"{self.name}: deleting the Serve app")
        quietly(lambda: stop_joiner(self.joiner_name), f"{self.name}: flushing the feedback joiner")
        if self.gate is not None:
            ray.kill(self.gate, no_restart=True)

    def summary(self) -> dict[str, Any]:
        g = self.gate_summary
        promotions = [
            {k: p.get(k) for k in ("version", "parent", "heldout_accuracy", "parent_heldout_accuracy", "decision")}
            for p in g.get("promotions", [])
        ]
        curve = [{"events": c.get("events"), "heldout_accuracy": c.get("heldout_accuracy"), "version": c.get("version")}
                 for c in g.get("curve", [])]
        return {
            "policy_id": self.fb.policy_id,
            "origin": self.origin,
            # what a request carries (the report's summary table shows it), and the accuracy of a guess
            "inputs": "text pairs (text, text_pair)" if self.data.pairs else "texts",
            "chance_accuracy": round(1.0 / len(self.data.labels), 4),
            "initial_heldout_accuracy": g.get("initial_heldout_accuracy"),
            "heldout_accuracy": g.get("heldout_accuracy"),
            "events_to_95pct": events_to_fraction(curve, g.get("heldout_accuracy")),
            "live_version": g.get("live_version"),
            "feedback_events": self.joiner_stats.get("joined", 0),
            # stored, reopened after a failed write, given up on, dropped (docs/reliability.md)
            "joiner": dict(self.joiner_stats),
            "predictions": int(self.actors.total("predicts")),
            "traffic_errors": {i: s.get("errors") for i, s in self.actors.stats.items()},
            "learner_updates": self.learner_figures()["updates"],
            "promoted": g.get("promoted", 0),
            "refused": g.get("refused", 0),
            "rollbacks": g.get("rollbacks", []),
            # drops live shared with the version before it: the data changed, no rollback
            "world_changes": g.get("world_changes", []),
            "reached_stop_accuracy_s": round(self.reached_at - self.started, 3) if self.reached_at else None,
            "resumed_from_update": self.learner.resumed_from if self.learner else None,
            "curve": curve,
            "promotions": promotions,
            "adaptations": self.adaptations,
            "alarms": self.alarms,
            **({"continual": self.matrix.metrics()} if self.matrix is not None else {}),
            **self.encoders.summary(g.get("promotions", [])),
        }


def _figures(metrics: dict[str, Any]) -> dict[str, Any]:
    """The continual figures of an event (the matrix itself goes to summary.json)."""
    return {k: v for k, v in metrics.items() if k not in ("groups", "matrix", "baseline")}


def _numpy(weights: dict[str, Any]) -> dict[str, np.ndarray]:
    return {k: v.numpy() for k, v in weights.items()}
