"""`evolve pretrain`: masked-LM pretraining on Ray Train, then publish encoder + tokenizer.

    config -> corpus, tokenizer, model checked (before Ray starts) -> connect Ray
    -> TorchTrainer (learners.train_loop) in a thread; this thread prints progress,
       logs events and asks the workers to stop at the budget or on Ctrl-C
    -> the last checkpoint's policy -> PolicyRegistry (safetensors + tokenizer + lineage)
    -> summary.json loops.mlm

Running it again with the same run directory resumes from the last checkpoint
(Ray Train keeps them under <run dir>/train/mlm) with the same tokenizer.
"""

from __future__ import annotations

import platform
import signal
import threading
import time
from pathlib import Path
from typing import Any, Callable

import ray

from cluster.connect import connect, disconnect
from cluster.errors import UserError
from cluster.rundir import RunDir
from core.config import EvolveConfig
from core.mlm_data import MLMData, prepare_mlm_data
from core.registry import PolicyRegistry, RegistryError
from learners.mlm import MLMObjective, MLMSetup
from learners.text_source import RayDataSource
from learners.train_loop import POLICY_DIR, LoopSpec, ProgressBoard, fit, read_policy

LOOP = "mlm"


def execute(cfg: EvolveConfig, say: Callable[[str], None] = print) -> int:
    started = time.time()
    rd = RunDir(cfg.run.resolved_run_dir())
    rd.write_config(cfg)
    say(f"evolve: pretrain {cfg.run.name!r} -> {rd.path}")
    try:
        data = _prepare(cfg, rd)
    except ValueError as exc:  # CorpusError, TokenizerError, ModelError: the user's input
        rd.close()
        raise UserError(str(exc)) from None
    say(f"evolve: corpus {data.facts['train_texts']} train / {data.facts['heldout_texts']} held-out texts, "
        f"{data.facts['train_tokens']:,} tokens, vocab {data.facts['vocab_size']} ({data.facts['tokenizer']})")
    rd.event(LOOP, "data", **data.facts, prepare_s=round(time.time() - started, 3))
    run_info: dict[str, Any] = {"name": cfg.run.name, "run_dir": str(rd.path), "started_at": started}
    tracker = _Tracker(rd, say, cfg.run.budget_s, started)
    reason, summary = "error", {}
    try:
        handle = connect(cfg.cluster)
        run_info.update(address=handle.address, embedded=handle.embedded)
        say(f"evolve: Ray {ray.__version__} {'embedded' if handle.embedded else 'cluster'} at {handle.address}")
        reason, result = _train(cfg, rd, data, tracker, started, handle.embedded)
        summary = tracker.summary(data)
        summary["published_version"] = _publish(cfg, rd, data, result, tracker)
        say(f"evolve: published {cfg.mlm.policy_id} v{summary['published_version']} "
            f"(masked accuracy {summary['masked_accuracy']:.3f}, perplexity {summary['perplexity']:.1f})")
    finally:
        if not summary:
            summary = tracker.summary(data)
        run_info.update(wall_s=round(time.time() - started, 3), stopped_by=reason, ray_version=ray.__version__,
                        python=platform.python_version())
        rd.event("run", "finished", stopped_by=reason, wall_s=run_info["wall_s"])
        path = rd.write_summary(run_info, {LOOP: summary})
        rd.close()
        disconnect()
    say(f"evolve: stopped ({reason}) after {run_info['wall_s']:.1f}s; summary: {path}")
    return 0


def _prepare(cfg: EvolveConfig, rd: RunDir) -> MLMData:
    if cfg.learner.use_gpu is False and cfg.mlm.model.preset == "gpu-base":
        print("evolve: warning: the gpu-base preset on CPU learners will be slow")
    return prepare_mlm_data(cfg.mlm, tokenizer_dir=rd.path / "tokenizer")


def _train(cfg: EvolveConfig, rd: RunDir, data: MLMData, tracker: "_Tracker", started: float, embedded: bool):
    board = ProgressBoard.remote()
    spec = _loop_spec(cfg, data, board, embedded)
    ray.data.DataContext.get_current().enable_progress_bars = False  # our progress line is the display
    datasets = {"train": ray.data.from_numpy(list(_chunks(data.train_blocks, 1024)))}
    trainer = fit(
        spec,
        num_workers=cfg.learner.num_workers,
        use_gpu=cfg.learner.use_gpu,
        cpus_per_worker=cfg.learner.cpus_per_worker,
        resources_per_worker=cfg.learner.resources_per_worker,
        storage_path=str((rd.path / "train").resolve()),
        name=LOOP,
        datasets=datasets,
    )
    stop = _StopSignals(board)  # after the trainer: Ray Train installs its own SIGINT handler
    outcome: dict[str, Any] = {}
    thread = threading.Thread(target=_run_fit, args=(trainer, outcome), name="evolve-fit", daemon=True)
    say_workers = cfg.learner.num_workers
    tracker.say(f"evolve: training on {say_workers} worker(s) x {spec.threads} thread(s), "
                f"{cfg.learner.batch_size} x {cfg.mlm.seq_len} tokens per worker step")
    thread.start()
    deadline = None if cfg.run.budget_s is None else started + cfg.run.budget_s - cfg.mlm.finish_reserve_s
    reason = "max_steps"
    try:
        while thread.is_alive():
            thread.join(timeout=min(cfg.run.progress_interval_s, 1.0))
            tracker.take(ray.get(board.drain.remote()))
            if deadline is not None and time.time() >= deadline and reason == "max_steps":
                reason = "budget"
                board.request_stop.remote()
            if stop.reason and reason == "max_steps":
                reason = stop.reason
        tracker.take(ray.get(board.drain.remote()))
    finally:
        stop.restore()
    if "error" in outcome:
        raise UserError(f"training failed: {_one_line(outcome['error'])}") from outcome["error"]
    return reason, outcome["result"]


def _loop_spec(cfg: EvolveConfig, data: MLMData, board, embedded: bool) -> LoopSpec:
    mlm, learner = cfg.mlm, cfg.learner
    setup = MLMSetup(
        mlm=mlm,
        lr=learner.lr,
        model_config=data.model_config.to_dict(),
        pretrained_dir=str(mlm.model.pretrained_dir) if mlm.model.pretrained_dir else None,
        tokenizer_files=data.tokenizer_files(),
        special_ids=data.special_ids,
        heldout=data.heldout_blocks,
        info=data.facts,
    )
    return LoopSpec(
        objective_factory=MLMObjective,
        objective_config=setup,
        source=RayDataSource("train", batch_size=learner.batch_size),
        max_steps=mlm.max_steps,
        report_every=mlm.report_every,
        eval_every=mlm.eval_every,
        checkpoint_every=learner.checkpoint_every,
        threads=_threads(cfg, embedded),
        seed=mlm.seed,
        board=board,
    )


def _threads(cfg: EvolveConfig, embedded: bool) -> int:
    """Torch threads per worker: as configured, else the worker's share of an embedded machine.

    A worker reserves learner.cpus_per_worker CPUs in Ray (1 leaves room for Ray Data on a 2-core
    laptop) but on an embedded cluster may compute with every core its siblings do not use.
    """
    if cfg.mlm.threads_per_worker is not None:
        return cfg.mlm.threads_per_worker
    own = max(1, int(cfg.learner.cpus_per_worker))
    if not embedded:
        return own
    total = int(ray.cluster_resources().get("CPU", own))
    return max(own, total // cfg.learner.num_workers)


def _run_fit(trainer, outcome: dict[str, Any]) -> None:
    try:
        outcome["result"] = trainer.fit()
    except BaseException as exc:  # reported by the main thread
        outcome["error"] = exc


def _publish(cfg: EvolveConfig, rd: RunDir, data: MLMData, result, tracker: "_Tracker") -> int | None:
    if result is None or result.checkpoint is None:
        return None
    registry = PolicyRegistry(cfg.registry.uri or rd.path / "registry")
    with result.checkpoint.as_directory() as ckpt:
        if not (Path(ckpt) / POLICY_DIR).is_dir():
            return None
        weights, files, meta = read_policy(Path(ckpt) / POLICY_DIR)
    policy_id = cfg.mlm.policy_id
    latest = registry.latest(policy_id)
    # A resumed run continues the model the previous run published: that version is the parent.
    parent = latest.version if (latest is not None and tracker.resumed_from is not None) else None
    metadata = {
        "parent_version": parent,
        "metrics": {k: v for k, v in meta["metrics"].items() if k in ("masked_accuracy", "perplexity", "eval_loss")},
        "data_range": {"corpus": data.facts["corpus_path"], "texts": data.facts["train_texts"],
                       "tokens_seen": tracker.tokens, "steps": [tracker.resumed_from or 0, meta["step"]]},
        "info": {"objective": LOOP, "kind": "bert-encoder", "run_dir": str(rd.path), "run": cfg.run.name,
                 "ray_version": ray.__version__, **{k: v for k, v in data.facts.items() if k != "corpus_path"}},
    }
    try:
        version = registry.publish(policy_id, weights, metadata, files=files)
    except RegistryError as exc:
        raise UserError(f"cannot publish {policy_id}: {exc}") from None
    rd.event(LOOP, "published", policy_id=policy_id, version=version, parent_version=parent)
    return version


class _Tracker:
    """Turns the workers' board records into events, progress lines and the summary."""

    def __init__(self, rd: RunDir, say: Callable[[str], None], budget_s: float | None, started: float):
        self.rd, self.say, self.budget_s, self.started = rd, say, budget_s, started
        self.curve: list[dict[str, Any]] = []
        self.last: dict[str, Any] = {}
        self.resumed_from: int | None = None
        self.tokens, self.train_s, self.step, self.checkpoint_step = 0.0, 0.0, 0, None

    def take(self, records: list[dict[str, Any]]) -> None:
        for rec in records:
            kind = rec.pop("kind")
            self.rd.event(LOOP, kind, **rec)
            if kind == "progress":
                self.last = rec
                self.tokens, self.train_s, self.step = rec["total_tokens"], rec["train_s"], rec["step"]
                self.say(self._line())
            elif kind == "eval":
                self.curve.append(rec)
                self.tokens = max(self.tokens, rec["tokens"])
                self.step = max(self.step, rec["step"])
                self.train_s = max(self.train_s, rec["train_s"])
            elif kind == "checkpoint":
                self.checkpoint_step = rec["step"]
            elif kind == "resumed":
                self.resumed_from = rec["step"]
                self.say(f"evolve: resumed from the checkpoint at step {rec['step']}")

    def _line(self) -> str:
        elapsed = time.time() - self.started
        bar = ""
        if self.budget_s:
            done = min(1.0, elapsed / self.budget_s)
            bar = "[" + "#" * int(done * 20) + "." * (20 - int(done * 20)) + f"] {elapsed:5.0f}/{self.budget_s:.0f}s"
        else:
            bar = f"[{elapsed:6.0f}s]"
        acc = self.curve[-1]["masked_accuracy"] if self.curve else float("nan")
        return (f"{bar} mlm step {self.step} | {self.last.get('tokens_per_s', 0):,.0f} tok/s | "
                f"loss {self.last.get('loss', float('nan')):.3f} | held-out acc {acc:.3f}"
                + (f" | ckpt {self.checkpoint_step}" if self.checkpoint_step is not None else ""))

    def summary(self, data: MLMData | None) -> dict[str, Any]:
        """loops.mlm of summary.json; the curve of a resumed run includes the earlier runs' points."""
        full = self._full_curve()
        first, last = (full[0], full[-1]) if full else ({}, {})
        return {
            "initial_masked_accuracy": first.get("masked_accuracy"),
            "masked_accuracy": last.get("masked_accuracy"),
            "perplexity": last.get("perplexity"),
            "eval_loss": last.get("eval_loss"),
            "tokens": last.get("tokens", self.tokens),
            "tokens_per_s": (self.tokens / self.train_s) if self.train_s > 0 else None,
            "steps": max(self.step, last.get("step", 0)),
            "train_s": round(self.train_s, 3),
            "resumed_from_step": self.resumed_from,
            "curve": [{k: p[k] for k in ("step", "tokens", "train_s", "masked_accuracy", "perplexity", "eval_loss")
                       if k in p} for p in full],
        }

    def _full_curve(self) -> list[dict[str, Any]]:
        # The workers' curve lives in the checkpoint; after a resume this run only saw its own points,
        # so earlier points come from the event log of this run directory.
        from cluster.rundir import read_events

        points = {}
        for e in read_events(self.rd.events_path):
            if e.get("loop") == LOOP and e.get("event") == "eval":
                points[e["step"]] = e
        for p in self.curve:
            points[p["step"]] = p
        return [points[s] for s in sorted(points)]


class _StopSignals:
    """Ctrl-C / SIGTERM: ask the workers to stop at their next report (they checkpoint and export)."""

    def __init__(self, board) -> None:
        self.board, self.reason, self._previous = board, None, {}
        if threading.current_thread() is threading.main_thread():
            for sig in (signal.SIGINT, signal.SIGTERM):
                self._previous[sig] = signal.signal(sig, self._handle)

    def _handle(self, signum, _frame) -> None:
        if self.reason is not None:  # a second Ctrl-C: stop waiting
            raise KeyboardInterrupt
        self.reason = "interrupt" if signum == signal.SIGINT else "terminated"
        self.board.request_stop.remote()

    def restore(self) -> None:
        for sig, handler in self._previous.items():
            signal.signal(sig, handler)


def _chunks(blocks, rows: int):
    for start in range(0, len(blocks), rows):
        yield blocks[start : start + rows]


def _one_line(exc: BaseException) -> str:
    return " ".join(str(exc).split())[:300]
