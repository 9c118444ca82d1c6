"""The run's progress on the terminal: a clock line, then one line per loop, each at most 100 columns.

    [  65.0s/120s] CPU 3.1/4 used | replay transitions=5120 feedback=230 text=230
      sentiment  v=2 acc=0.612 online=0.71 pred=1840 fb=1290 prom=1 ref=0 upd=400 loss=0.41
      cartpole   v=9 ret=143.2 steps=51200 steps/s=812 eps=1380 train_ret=37.2 upd=2900 loss=0.9

Every figure also goes to events.jsonl in full; the terminal gets short names and
no empty values, and a line that would still be too wide ends in "...".
"""

from __future__ import annotations

from typing import Any

WIDTH = 100
SHORT = {"heldout_acc": "acc", "online_acc": "online", "eval_return": "ret", "env_steps": "steps",
         "steps_per_s": "steps/s", "episodes": "eps", "train_return": "train_ret", "predicts": "pred",
         "feedback": "fb", "promoted": "prom", "refused": "ref", "updates": "upd", "version": "v",
         "adapt": "adapt"}
# the figures a reader looks for first lead the line; HIDDEN ones are in events.jsonl only
FIRST = ("version", "heldout_acc", "eval_return", "online_acc")
HIDDEN = ("steps_per_add",)


def progress_lines(elapsed: float, budget: float | None, usage: dict, figures: dict[str, dict[str, Any]],
                   replay: dict[str, int] | None = None) -> list[str]:
    total, free = usage["total"], usage["available"]
    clock = f"{elapsed:6.1f}s" + (f"/{budget:.0f}s" if budget else "")
    head = f"[{clock}] CPU {total.get('CPU', 0) - free.get('CPU', 0):.1f}/{total.get('CPU', 0):.0f} used"
    if replay:
        head += " | replay " + " ".join(f"{name}={size}" for name, size in replay.items())
    width = max([len(name) for name in figures] + [8])
    lines = [_fit(head)]
    for name, fig in figures.items():
        ordered = [k for k in FIRST if k in fig] + [k for k in fig if k not in FIRST]
        cells = " ".join(f"{SHORT.get(k, k)}={_value(fig[k])}" for k in ordered
                         if fig[k] is not None and k not in HIDDEN)
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
