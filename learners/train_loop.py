"""The one training loop every objective runs in (MLM, DQN, tabular Q, online feedback).

    spec -> TorchTrainer(num_workers, DDP: gloo on CPU / nccl on GPU)
         -> each worker: objective.setup -> resume from ray.train.get_checkpoint()
            -> step on its source's batches
            -> every report_every steps: rank 0 posts progress to the ProgressBoard
               and reads the stop flag, which it broadcasts to every rank
            -> every eval_every steps: rank 0 evaluates (held-out curve)
            -> every checkpoint_every steps and at the stop: ray.train.report(checkpoint)
            -> the last checkpoint also holds the exported policy (policy/)

`run_loop` is the loop itself with its Ray calls behind `LoopHooks`, so it
runs in a unit test without a cluster; `train_loop_per_worker` binds it to
Ray Train.  Nothing here knows what an objective learns.
"""

from __future__ import annotations

import json
import logging
import os
import tempfile
import time
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any, Callable, Iterator

import ray
import torch

from learners.objective import BatchSource, ExportedPolicy, Objective, WorkerContext

STATE_FILE = "objective.pt"
LOOP_FILE = "loop_state.json"
POLICY_DIR = "policy"


@dataclass
class LoopSpec:
    """What the driver hands every worker (pickled into train_loop_config)."""

    objective_factory: Callable[[], Objective]
    objective_config: Any
    source: BatchSource
    max_steps: int | None = None
    report_every: int = 10
    eval_every: int = 100
    checkpoint_every: int = 500
    threads: int = 1
    seed: int = 0
    board: Any = None  # a ProgressBoard actor handle; None = stop only at max_steps
    # False: the loop has the curve's "before" already (a feedback loop: the gate scored version 1),
    # and the first updates do not wait for a step-0 evaluation
    eval_at_start: bool = True


@dataclass
class LoopState:
    """Counters that survive a resume (stored next to the objective state in every checkpoint)."""

    step: int = 0
    tokens: float = 0.0  # summed metrics of the objective, all ranks ("tokens", ...)
    totals: dict[str, float] = field(default_factory=dict)
    train_s: float = 0.0  # seconds spent in steps (evaluation and checkpoints excluded)
    curve: list[dict[str, float]] = field(default_factory=list)  # held-out evaluations
    resumes: int = 0


@dataclass
class LoopHooks:
    """The loop's only contact with the outside world (Ray Train, the board)."""

    report: Callable[[dict[str, Any], str | None], None]  # (metrics, checkpoint dir or None); all ranks
    broadcast_stop: Callable[[bool], bool]  # rank 0's flag -> every rank
    post: Callable[[dict[str, Any]], None]  # progress record -> the driver (rank 0)
    stop_requested: Callable[[], bool]  # rank 0 asks the driver


def run_loop(spec: LoopSpec, ctx: WorkerContext, hooks: LoopHooks, resume_dir: str | None) -> LoopState:
    objective = spec.objective_factory()
    objective.setup(spec.objective_config, ctx)
    state = _restore(objective, resume_dir) if resume_dir else LoopState()
    lead = ctx.rank == 0
    if lead and resume_dir:
        state.resumes += 1
        hooks.post({"kind": "resumed", "step": state.step, "tokens": state.tokens})
    if lead and not resume_dir:
        hooks.post({"kind": "started", "step": state.step})  # the driver knows the workers are up
    if lead and not state.curve and spec.eval_at_start:
        _evaluate(objective, state, hooks)  # step 0: the "before" of the learning curve
    batches: Iterator[Any] = spec.source.batches(ctx, seed=spec.seed + state.step)
    window = _Window(objective.summed_metrics, ctx.world_size)
    while True:
        at_boundary = state.step % spec.report_every == 0
        stop = spec.max_steps is not None and state.step >= spec.max_steps
        if at_boundary and not stop:
            if lead and window.steps:
                hooks.post({"kind": "progress", "step": state.step, **window.flush(state)})
            stop = hooks.broadcast_stop(lead and hooks.stop_requested())
        if stop:
            break
        started = time.perf_counter()  # the step's time includes waiting for its batch
        metrics = objective.step(next(batches))
        window.add(metrics, time.perf_counter() - started)
        state.step += 1
        if lead and state.step % spec.eval_every == 0:
            window.close_into(state)
            _evaluate(objective, state, hooks)
        if state.step % spec.checkpoint_every == 0:
            window.close_into(state)
            _checkpoint(objective, state, ctx, hooks, final=False)
    window.close_into(state)
    if lead and (not state.curve or state.curve[-1]["step"] != state.step):
        _evaluate(objective, state, hooks)
    _checkpoint(objective, state, ctx, hooks, final=True)
    return state


class _Window:
    """Metrics since the last progress report; counts (summed metrics) scaled to all ranks."""

    def __init__(self, summed: tuple[str, ...], world_size: int):
        self.summed, self.world = summed, world_size
        self._reset()

    def _reset(self) -> None:
        self.steps, self.seconds, self.sums = 0, 0.0, {}
        self.pending_s, self.pending = 0.0, {}

    def add(self, metrics: dict[str, float], seconds: float) -> None:
        self.steps += 1
        self.seconds += seconds
        self.pending_s += seconds
        for k, v in metrics.items():
            scale = self.world if k in self.summed else 1
            self.sums[k] = self.sums.get(k, 0.0) + v * scale
            if k in self.summed:
                self.pending[k] = self.pending.get(k, 0.0) + v * scale

    def close_into(self, state: LoopState) -> None:
        """Move counts and time into the run totals (before an evaluation or checkpoint reads them)."""
        state.train_s += self.pending_s
        for k, v in self.pending.items():
            state.totals[k] = state.totals.get(k, 0.0) + v
        state.tokens = state.totals.get("tokens", state.tokens)
        self.pending_s, self.pending = 0.0, {}

    def flush(self, state: LoopState) -> dict[str, float]:
        self.close_into(state)
        out = {k: (v if k in self.summed else v / self.steps) for k, v in self.sums.items()}
        for k in self.summed:
            if k in self.sums and self.seconds > 0:
                out[f"{k}_per_s"] = self.sums[k] / self.seconds
        out.update(total_tokens=state.tokens, train_s=state.train_s, window_s=self.seconds, world_size=self.world)
        self._reset()
        return out


def _evaluate(objective: Objective, state: LoopState, hooks: LoopHooks) -> None:
    started = time.perf_counter()
    figures = objective.evaluate()
    point = {"step": state.step, "tokens": state.tokens, "train_s": round(state.train_s, 3), **figures}
    state.curve.append(point)
    hooks.post({"kind": "eval", "eval_s": time.perf_counter() - started, **point})


def _checkpoint(objective: Objective, state: LoopState, ctx: WorkerContext, hooks: LoopHooks, final: bool) -> None:
    metrics = {"step": state.step, "tokens": state.tokens, "final": final}
    if ctx.rank != 0:
        hooks.report(metrics, None)  # a barrier: every rank reports at the same steps
        return
    with tempfile.TemporaryDirectory(prefix="evolve-ckpt-") as tmp:
        torch.save(objective.state_dict(), os.path.join(tmp, STATE_FILE))
        Path(tmp, LOOP_FILE).write_text(json.dumps(asdict(state)))
        if final:
            write_policy(objective.export_policy(), Path(tmp, POLICY_DIR), state)
        hooks.report(metrics, tmp)
    hooks.post({"kind": "checkpoint", "step": state.step, "final": final})


def _restore(objective: Objective, directory: str) -> LoopState:
    objective.load_state_dict(torch.load(os.path.join(directory, STATE_FILE), weights_only=True, map_location="cpu"))
    return LoopState(**json.loads(Path(directory, LOOP_FILE).read_text()))


# ---- the exported policy inside the final checkpoint ----------------------------------------
def write_policy(policy: ExportedPolicy, directory: Path, state: LoopState) -> None:
    from safetensors.torch import save_file

    (directory / "files").mkdir(parents=True)
    save_file(policy.weights, str(directory / "weights.safetensors"))
    for name, data in policy.files.items():
        (directory / "files" / name).write_bytes(data)
    last = state.curve[-1] if state.curve else {}
    meta = {"metrics": {**policy.metrics, **_floats(last)}, "info": policy.info, "step": state.step}
    (directory / "meta.json").write_text(json.dumps(meta))


def read_policy(directory: str | Path) -> tuple[dict[str, torch.Tensor], dict[str, bytes], dict[str, Any]]:
    from safetensors.torch import load_file

    directory = Path(directory)
    files = {p.name: p.read_bytes() for p in sorted((directory / "files").iterdir())}
    return load_file(str(directory / "weights.safetensors")), files, json.loads((directory / "meta.json").read_text())


def _floats(d: dict[str, Any]) -> dict[str, float]:
    return {k: float(v) for k, v in d.items() if isinstance(v, (int, float)) and not isinstance(v, bool)}


# ---- Ray at the edge -------------------------------------------------------------------------
@ray.remote(num_cpus=0)
class ProgressBoard:
    """Where rank 0 posts progress and the driver posts "stop" (budget, Ctrl-C)."""

    def __init__(self) -> None:
        self._records: list[dict[str, Any]] = []
        self._stop = False

    def post(self, record: dict[str, Any]) -> None:
        self._records.append({"time": time.time(), **record})

    def drain(self) -> list[dict[str, Any]]:
        out, self._records = self._records, []
        return out

    def request_stop(self) -> None:
        self._stop = True

    def stop_requested(self) -> bool:
        return self._stop


def train_loop_per_worker(config: dict[str, Any]) -> None:
    import ray.train
    import ray.train.torch
    import torch.distributed as dist

    spec: LoopSpec = config["spec"]
    torch.set_num_threads(spec.threads)
    # One INFO line per checkpoint would drown the driver's progress line; warnings still show.
    # (some Ray Train modules name their logger by file path, not by module)
    for name in ["ray.train", *[n for n in logging.root.manager.loggerDict if "ray.train" in n or "ray/train" in n]]:
        logging.getLogger(name).setLevel(logging.WARNING)
    tctx = ray.train.get_context()
    ctx = WorkerContext(
        rank=tctx.get_world_rank(),
        world_size=tctx.get_world_size(),
        device=ray.train.torch.get_device(),
        wrap_model=ray.train.torch.prepare_model,  # DDP when world_size > 1
    )
    board = spec.board

    def report(metrics: dict[str, Any], directory: str | None) -> None:
        ckpt = ray.train.Checkpoint.from_directory(directory) if directory else None
        ray.train.report(metrics, checkpoint=ckpt)

    def broadcast_stop(flag: bool) -> bool:
        if ctx.world_size == 1:
            return flag
        t = torch.tensor([1 if flag else 0], device=ctx.device)
        dist.broadcast(t, src=0)
        return bool(t.item())

    hooks = LoopHooks(
        report=report,
        broadcast_stop=broadcast_stop,
        post=(lambda rec: board.post.remote(rec)) if board is not None else (lambda rec: None),
        stop_requested=(lambda: ray.get(board.stop_requested.remote(), timeout=30)) if board is not None else (lambda: False),
    )
    checkpoint = ray.train.get_checkpoint()
    if checkpoint is None:
        run_loop(spec, ctx, hooks, None)
        return
    with checkpoint.as_directory() as resume_dir:
        run_loop(spec, ctx, hooks, resume_dir)


def fit(
    spec: LoopSpec,
    *,
    num_workers: int,
    use_gpu: bool,
    cpus_per_worker: float,
    resources_per_worker: dict[str, float],
    storage_path: str,
    name: str,
    datasets: dict[str, Any] | None = None,
    keep_checkpoints: int = 2,
    max_failures: int = 0,
):
    """Run the loop on a TorchTrainer; a second call with the same storage_path/name resumes."""
    from ray.train import CheckpointConfig, FailureConfig, RunConfig, ScalingConfig
    from ray.train.torch import TorchConfig, TorchTrainer

    trainer = TorchTrainer(
        train_loop_per_worker,
        train_loop_config={"spec": spec},
        torch_config=TorchConfig(backend="nccl" if use_gpu else "gloo"),
        scaling_config=ScalingConfig(
            num_workers=num_workers,
            use_gpu=use_gpu,
            resources_per_worker={"CPU": cpus_per_worker, **({"GPU": 1} if use_gpu else {}), **resources_per_worker},
        ),
        run_config=RunConfig(
            storage_path=storage_path, name=name, checkpoint_config=CheckpointConfig(num_to_keep=keep_checkpoints),
            failure_config=FailureConfig(max_failures=max_failures),
        ),
        datasets=datasets or {},
    )
    return trainer
