"""The run's progress on the terminal: a clock line, then one line per loop, each at most 100 columns.

    [  65.0s/120s] CPU 3.1/4 used | replay sentiment=230 sentiment-text=230 cartpole=5120
      sentiment  v=2 acc=0.612 online1st=0.71 pred=1840 fb=1290 prom=1 ref=0 upd=400 loss=0.41
      cartpole   v=9 ret=143.2 steps=51200 steps/s=812 eps=1380 train_ret=37.2 upd=2900 loss=0.9

Every figure also goes to events.jsonl in full; the terminal gets short names and
no empty values, and a line that would still be too wide ends in "...".  Which
figures lead a loop's line, their short names and the ones kept off it are its
kind's declarations (core/config/kinds.py `Figures`).
"""

from __future__ import annotations

from typing import Any

from core.config.kinds import figures_of

WIDTH = 100


def progress_lines(elapsed: float, budget: float | None, usage: dict, figures: dict[str, dict[str, Any]],
                   replay: dict[str, int] | None = None, kinds: dict[str, str] | None = None) -> list[str]:
    """`kinds`: each loop's kind (a loop not named reads every kind's declarations)."""
    total, free = usage["total"], usage["available"]
    clock = f"{elapsed:6.1f}s" + (f"/{budget:.0f}s" if budget else "")
    head = f"[{clock}] CPU {total.get('CPU', 0) - free.get('CPU', 0):.1f}/{total.get('CPU', 0):.0f} used"
    if replay:
        head += " | replay " + " ".join(f"{name}={size}" for name, size in replay.items())
    width = max([len(name) for name in figures] + [8])
    lines = [_fit(head)]
    for name, fig in figures.items():
        declared = figures_of((kinds or {}).get(name))
        ordered = [k for k in declared.lead if k in fig] + [k for k in fig if k not in declared.lead]
        cells = " ".join(f"{declared.short.get(k, k)}={_value(fig[k])}" for k in ordered
                         if fig[k] is not None and k not in declared.hidden)
        lines.append(_fit(f"  {name:<{width}} {cells}"))
    return lines


def _value(value: Any) -> str:
    if isinstance(value, float):
        return f"{value:.4g}"
    if isinstance(value, dict):
        return ",".join(f"{k}:{_value(v)}" for k, v in value.items())
    return str(value)


def _fit(line: str) -> str:
    return line if len(line) <= WIDTH else line[: WIDTH - 3] + "..."
