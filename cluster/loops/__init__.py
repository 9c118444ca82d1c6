"""Build a run's loops: each `loops.<name>` of the config, as the loop class its kind declares.

The kinds and what each declares (section, tables, loop class, figures) are
one registry, core/config/kinds.py.  A loop class is imported only when a run
names its kind: a loop pulls in torch, gymnasium, transformers and Ray Train,
which `evolve status` never needs.
"""

from __future__ import annotations

import importlib
from typing import TYPE_CHECKING

from core.config.kinds import KINDS

if TYPE_CHECKING:
    from cluster.loop import Loop, RunContext
    from core.config.evolve import EvolveConfig


def build(name: str, cfg: "EvolveConfig", ctx: "RunContext") -> "Loop":
    """The loop `name` of `cfg`, not started."""
    module, _, cls = KINDS[cfg.loops[name].kind].loop.partition(":")
    return getattr(importlib.import_module(module), cls)(cfg, ctx, name)
