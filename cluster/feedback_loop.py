"""The live feedback loop: Serve predict/feedback -> replay -> online learner -> gate -> live on every replica.

    TrafficActor x n --HTTP predict--> FeedbackServer (Serve, @serve.batch) --events--> FeedbackJoiner
          |                                 ^                                              | joined rows
          +------HTTP feedback--------------+                               replay `feedback` (+ `text`)
                                            | long-poll                                    | sample
                                   PolicyPublisher <--promote-- GateActor <--candidate-- TorchTrainer(OnlineObjective)

The driver (cluster.run) calls poll() every progress interval: this class
collects the traffic, joiner, learner and gate figures, writes the gate's
decisions to events.jsonl, hands the joiner's prequential accuracy of the
live version to the gate (which rolls back on a drop), and builds
`loops.<name>` of summary.json.
"""

from __future__ import annotations

import time
from typing import Any

import numpy as np
import ray

from actors.traffic import TrafficActor
from cluster.errors import UserError
from cluster.loop_support import LearnerRun, get_or as _get, mean_or_none as _mean, round_or_none as _round
from core.config import EvolveConfig
from core.labeled_data import LabeledData
from core.registry import PolicyNotFound, PolicyRegistry
from core.text_classifier import ClassifierBundle, ClassifierError, from_encoder
from core.text_corpus import CorpusError
from learners.feedback_source import FeedbackSource
from learners.online import OnlineObjective, OnlineSetup, split_batch
from learners.train_loop import LoopSpec, ProgressBoard
from serving.feedback_app import deploy_feedback_app, undeploy_feedback_app
from serving.gate_actor import GateActor
from serving.publisher import PUBLISHER_NAME, get_or_create_publisher

SPEC = {"kind": "text_classifier"}


class FeedbackLoop:
    def __init__(self, cfg: EvolveConfig, ctx: Any):
        self.cfg, self.ctx, self.fb = cfg, ctx, cfg.feedback
        self.name = cfg.feedback.name
        self.started = time.time()
        self.traffic: list[Any] = []
        self.traffic_stats: dict[int, dict[str, Any]] = {}
        self.learner: dict[str, Any] = {}
        self.gate_summary: dict[str, Any] = {}
        self.joiner_stats: dict[str, Any] = {}
        self.gate = self.publisher = self.app = self.board = self.learner_run = None
        self.origin: dict[str, Any] = {}
        self.resumed_from: int | None = None
        self.reached_at: float | None = None

    # ---- start -------------------------------------------------------------------------
    def start(self) -> None:
        fb, ctx = self.fb, self.ctx
        if not self.cfg.serving.enabled:
            raise UserError("the feedback loop serves its model: set serving.enabled: true")
        self.started = time.time()
        data = self._data()
        self.publisher = get_or_create_publisher(ctx.registry.uri)
        self.gate = GateActor.options(name=f"evolve-gate-{fb.policy_id}", get_if_exists=True).remote(
            ctx.registry.uri, fb.data.model_dump(mode="json"), fb.gate.model_dump(), PUBLISHER_NAME, SPEC,
            torch_threads=1,
        )
        first = self._bootstrap(data)
        ctx.run_dir.event(self.name, "bootstrap", **_plain(first), origin=self.origin)
        self.app = deploy_feedback_app(self.publisher, ctx.registry.uri, fb, ctx.replay,
                                       num_cpus=self.cfg.serving.replica_num_cpus)
        base = ctx.endpoints.get("http", f"http://{self.cfg.serving.host}:{self.cfg.serving.http_port}")
        ctx.endpoints[f"{self.name}_predict"] = f"{base}{self.app.route_prefix}/predict"
        ctx.endpoints[f"{self.name}_feedback"] = f"{base}{self.app.route_prefix}/feedback"
        if "grpc" in ctx.endpoints:
            ctx.endpoints[f"{self.name}_grpc"] = ctx.endpoints["grpc"]
        n = fb.traffic.num_actors
        for i in range(n):
            self.traffic.append(TrafficActor.options(num_cpus=fb.traffic.actor_num_cpus).remote(
                base, fb.traffic.model_dump(mode="json"), fb.data.model_dump(mode="json"), f"{self.name}-traffic-{i}",
                seed=self.cfg.run.seed + i, shard=(i, n),
            ))
        self._start_learner(data)

    def _data(self) -> LabeledData:
        try:
            return self.fb.data.load()
        except CorpusError as exc:
            raise UserError(f"feedback.data: {exc}") from None

    def _bootstrap(self, data: LabeledData) -> dict[str, Any]:
        """Version 1 = the starting classifier (pretrained encoder + a fresh head), unless a
        version is live already (a resumed run, a shared registry): the gate re-announces it."""
        pid = self.fb.policy_id
        if self.ctx.registry.latest(pid, "live") is not None:
            return ray.get(self.gate.bootstrap.remote(pid))
        try:
            bundle = self._starting_classifier(data)
        except ClassifierError as exc:
            raise UserError(f"feedback: cannot build the starting classifier: {exc}") from None
        weights = {k: v.numpy() for k, v in bundle.weights().items()}
        meta = {"info": {"origin": self.origin}}
        return ray.get(self.gate.bootstrap.remote(pid, weights=weights, files=bundle.files(), metadata=meta))

    def _starting_classifier(self, data: LabeledData) -> ClassifierBundle:
        fb = self.fb
        if fb.encoder_registry and _exists(fb.encoder_registry):  # PolicyRegistry would create it
            reg = PolicyRegistry(fb.encoder_registry)
            meta = reg.latest(fb.encoder_policy) if fb.encoder_version is None else None
            if meta is not None or fb.encoder_version is not None:
                version = fb.encoder_version if fb.encoder_version is not None else meta.version
                try:
                    loaded = reg.load(fb.encoder_policy, version, as_numpy=True)
                except PolicyNotFound as exc:
                    raise UserError(f"feedback.encoder_version: {exc}") from None
                self.origin = {"encoder_registry": fb.encoder_registry, "encoder_policy": fb.encoder_policy,
                               "encoder_version": version,
                               "encoder_masked_accuracy": loaded.meta.metrics.get("masked_accuracy")}
                return from_encoder(loaded.weights, loaded.files, data.labels, fb.max_len, seed=self.cfg.run.seed)
        if fb.encoder_registry:
            self.ctx.run_dir.event(self.name, "no_encoder", registry=fb.encoder_registry, policy=fb.encoder_policy)
            print(f"evolve: warning: no encoder {fb.encoder_policy!r} in {fb.encoder_registry} "
                  "(run `evolve pretrain configs/mlm.yaml` first); starting from a random init", flush=True)
        return self._random_classifier(data)

    def _random_classifier(self, data: LabeledData) -> ClassifierBundle:
        """No pretrained encoder: a tokenizer trained on the traffic texts and a random encoder."""
        import json

        from core.text_models import bert_config
        from core.tokenizer import tokenizer_files, train_wordpiece

        fb = self.fb
        tok = train_wordpiece([t for t, _ in data.train], fb.vocab_size)
        config = bert_config(fb.model, len(tok), tok.pad_token_id, max_positions=max(fb.max_len, 128))
        files = {**tokenizer_files(tok), "config.json": json.dumps(config.to_dict(), default=str).encode()}
        self.origin = {"encoder": "random_init", "vocab_size": len(tok)}
        return from_encoder(None, files, data.labels, fb.max_len, seed=self.cfg.run.seed)

    def _start_learner(self, data: LabeledData) -> None:
        fb, learner = self.fb, self.cfg.learner
        live = self.ctx.registry.load(fb.policy_id, stage="live", as_numpy=True)
        fresh, _ = split_batch(fb.batch_size, fb.rehearsal)
        source = FeedbackSource(self.ctx.replay, fb.feedback_table, fresh)
        setup = OnlineSetup(fb=fb, files=dict(live.files), weights=dict(live.weights), labels=data.labels,
                            parent_version=live.meta.version, gate=self.gate, heldout=data.heldout[:200],
                            seed=self.cfg.run.seed)
        self.board = ProgressBoard.remote()
        spec = LoopSpec(
            objective_factory=OnlineObjective,
            objective_config=setup,
            source=source,
            report_every=10,
            eval_every=fb.candidate_every,
            checkpoint_every=fb.checkpoint_every,
            threads=max(1, int(learner.cpus_per_worker)),
            seed=self.cfg.run.seed,
            board=self.board,
        )
        self.learner_run = LearnerRun(self.name, spec, learner, self.ctx.run_dir)

    # ---- poll --------------------------------------------------------------------------
    def poll(self) -> dict[str, Any]:
        if self.learner_run is not None:
            self.learner_run.check()
        self._poll_traffic()
        self._poll_learner()
        self._poll_gate()
        live = self.gate_summary.get("live_version")
        acc = self.gate_summary.get("heldout_accuracy")
        if self.reached_at is None and acc is not None and self.fb.stop_accuracy is not None \
                and acc >= self.fb.stop_accuracy:
            self.reached_at = time.time()
            self.ctx.run_dir.event(self.name, "reached", heldout_accuracy=acc, version=live,
                                   elapsed_s=round(self.reached_at - self.started, 3))
        served = sum(s.get("predicts", 0) for s in self.traffic_stats.values())
        return {
            "predicts": served,
            "feedback": self.joiner_stats.get("joined", 0),
            "online_acc": _round(_mean([s.get("recent_accuracy") for s in self.traffic_stats.values()]), 3),
            "heldout_acc": _round(acc, 3),
            "version": live,
            "promoted": self.gate_summary.get("promoted", 0),
            "refused": self.gate_summary.get("refusals", 0),
            "updates": int(self.learner.get("updates", 0)),
            "loss": _round(self.learner.get("loss"), 4),
        }

    def _poll_traffic(self) -> None:
        refs = {i: a.stats.remote() for i, a in enumerate(self.traffic)}
        if refs:
            ready, _ = ray.wait(list(refs.values()), num_returns=len(refs), timeout=5.0)
            for i, ref in refs.items():
                if ref in ready:
                    try:
                        self.traffic_stats[i] = ray.get(ref)
                    except ray.exceptions.RayActorError:
                        continue  # restarting: its last figures stand
        self.joiner_stats = _get(self.app.joiner.stats.remote(), self.joiner_stats)

    def _poll_learner(self) -> None:
        for rec in _get(self.board.drain.remote(), []):
            kind = rec.pop("kind")
            if kind == "progress":
                self.learner.update(updates=rec.get("step", 0), loss=rec.get("loss"))
                self.ctx.run_dir.event(self.name, "learner", **rec)
            elif kind == "resumed":
                self.resumed_from = rec.get("step")
                self.ctx.run_dir.event(self.name, "resumed", **rec)
            elif kind in ("checkpoint", "eval"):
                self.ctx.run_dir.event(self.name, kind, **rec)

    def _poll_gate(self) -> None:
        for ev in _get(self.gate.drain_events.remote(), []):
            kind = ev.pop("event", "gate")
            self.ctx.run_dir.event(self.name, kind, **_plain(ev))
        self.gate_summary = _get(self.gate.summary.remote(self.fb.policy_id), self.gate_summary)
        live = self.gate_summary.get("live_version")
        window = _get(self.app.joiner.prequential.remote(), {})
        if live is not None and live in window:
            correct, n = window[live]
            self.gate.check_window.remote(self.fb.policy_id, live, float(correct), int(n))

    def done(self) -> bool:
        return self.reached_at is not None

    # ---- stop and summary ----------------------------------------------------------------
    def stop(self) -> None:
        stops = [a.stop.remote() for a in self.traffic]
        if stops:
            ray.wait(stops, num_returns=len(stops), timeout=15)
        for i, ref in enumerate(stops):  # a stopped actor answers with its final figures
            self.traffic_stats[i] = _get(ref, self.traffic_stats.get(i, {}))
        if self.board is not None:
            self.board.request_stop.remote()
        if self.learner_run is not None:
            self.learner_run.join()  # the learner checkpoints before it returns
        if self.board is not None:
            self._poll_learner()
        if self.gate is not None:
            _quiet(self._poll_gate)
        if self.app is not None:
            self.joiner_stats = _get(self.app.joiner.stats.remote(), self.joiner_stats)
        for handle in self.traffic:
            ray.kill(handle, no_restart=True)
        undeploy_feedback_app()
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
            "initial_heldout_accuracy": g.get("initial_heldout_accuracy"),
            "heldout_accuracy": g.get("heldout_accuracy"),
            "live_version": g.get("live_version"),
            "feedback_events": self.joiner_stats.get("joined", 0),
            "predictions": sum(s.get("predicts", 0) for s in self.traffic_stats.values()),
            "traffic_errors": {i: s.get("errors") for i, s in self.traffic_stats.items()},
            "learner_updates": int(self.learner.get("updates", 0)),
            "promoted": g.get("promoted", 0),
            "refused": g.get("refusals", 0),
            "rollbacks": g.get("rollbacks", []),
            "reached_stop_accuracy_s": round(self.reached_at - self.started, 3) if self.reached_at else None,
            "resumed_from_update": self.resumed_from,
            "curve": curve,
            "promotions": promotions,
        }


def _plain(d: dict[str, Any]) -> dict[str, Any]:
    """JSON-friendly copy (numpy scalars -> Python); the event writer owns `time`, `loop`, `event`."""
    out = {}
    for k, v in d.items():
        if isinstance(v, np.generic):
            v = v.item()
        out[f"gate_{k}" if k in ("time", "loop", "event") else k] = v
    return out


def _exists(uri: str) -> bool:
    import fsspec

    fs, root = fsspec.core.url_to_fs(uri)
    return fs.exists(root)


def _quiet(fn) -> None:
    try:
        fn()
    except Exception:  # teardown goes on
        pass
