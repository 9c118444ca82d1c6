"""The loop kinds `evolve run` knows, by the name a config's `loops:` uses.

Each kind is imported only when a run names it: a loop pulls in torch,
gymnasium, transformers and Ray Train, which `evolve status` never needs.
"""

from __future__ import annotations

import importlib
from typing import TYPE_CHECKING

if TYPE_CHECKING:
    from cluster.loop import Loop, RunContext
    from core.config.evolve import EvolveConfig

KINDS = {
    "rl": "cluster.loops.rl:RLLoop",
    "feedback": "cluster.loops.feedback:FeedbackLoop",
    "mlm": "cluster.loops.mlm:MLMLoop",
    "novelty": "cluster.loops.novelty:NoveltyLoop",
}


def build(kind: str, cfg: "EvolveConfig", ctx: "RunContext") -> "Loop":
    module, _, cls = KINDS[kind].partition(":")
    return getattr(importlib.import_module(module), cls)(cfg, ctx)
