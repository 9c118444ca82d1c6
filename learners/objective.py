"""The Learner objective: what one kind of learning does, apart from the loop that drives it.

`learners.train_loop` runs every objective the same way (Ray Train workers,
DDP, periodic reports and checkpoints, resume); an objective only says how to
build its model, how to take one step on a batch, how to evaluate, how to
save/restore its state and what policy it exports.  Objectives are plain
classes: a unit test drives them with `WorkerContext()` and no cluster.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any, Callable, Iterator, Protocol

import torch
from torch import nn


def _identity(module: nn.Module) -> nn.Module:
    return module


@dataclass
class WorkerContext:
    """Where an objective runs. The train loop fills it from Ray Train; tests use the defaults."""

    rank: int = 0
    world_size: int = 1
    device: torch.device = field(default_factory=lambda: torch.device("cpu"))
    # Wraps the module that computes the loss, e.g. ray.train.torch.prepare_model (DDP).
    wrap_model: Callable[[nn.Module], nn.Module] = _identity


@dataclass
class ExportedPolicy:
    """What goes to the registry: safetensors weights, extra files, and lineage facts."""

    weights: dict[str, torch.Tensor]
    files: dict[str, bytes]
    metrics: dict[str, float] = field(default_factory=dict)
    info: dict[str, Any] = field(default_factory=dict)


class Objective(Protocol):
    name: str
    # Metrics of `step` that are counts: summed over a report window and into
    # the run's totals (e.g. "tokens"); every other metric is averaged.
    summed_metrics: tuple[str, ...]

    def setup(self, config: Any, ctx: WorkerContext) -> None: ...
    def step(self, batch: Any) -> dict[str, float]: ...
    def evaluate(self) -> dict[str, float]: ...  # held-out figures; called on rank 0 only
    def state_dict(self) -> dict[str, Any]: ...
    def load_state_dict(self, state: dict[str, Any]) -> None: ...
    def export_policy(self) -> ExportedPolicy: ...


class BatchSource(Protocol):
    """Where a worker's batches come from (a Ray Data shard, the replay store, a list in a test)."""

    def batches(self, ctx: WorkerContext, seed: int) -> Iterator[Any]: ...
