"""The moments a run's terminal says as they happen, between the progress lines.

    [  47.3s] sentiment  v2 promoted: held-out 0.712 (v1 0.650)
    [ 212.9s] sentiment  rolled back v4 -> v3 (prequential)
    [ 388.0s] sentiment  world changed: v5 0.641 and v4 0.652 on 300 recent rows (held-out 0.857, 0.850)
    [ 301.4s] cartpole   solved: confirmed greedy return 487.200

A progress line shows where each loop is every few seconds; these lines say
when a version went live, was rolled back (or a drop was the world changing, not
the model), or a loop reached its goal, with the
run's clock, so a newcomer sees the first promotion the moment it happens.
They read the events the loops write (events.jsonl has every field).
"""

from __future__ import annotations

from typing import Any, Callable

LIVE = ("promote",)  # a gate decision that put a candidate live ("initial" is the starting version)


class Milestones:
    """A run-dir listener: `say`s one line per milestone event, with the time since `started`."""

    def __init__(self, say: Callable[[str], None], started: float, width: int = 8):
        self.say, self.started, self.width = say, started, width

    def __call__(self, record: dict[str, Any]) -> None:
        line = milestone(record)
        if line is not None:
            clock = f"[{record.get('time', self.started) - self.started:6.1f}s]"
            self.say(f"{clock} {record.get('loop', '?'):<{self.width}} {line}")


def milestone(record: dict[str, Any]) -> str | None:
    """The terminal's words for an event, or None for one that is not a milestone."""
    kind = record.get("event")
    if kind == "gate_decision" and record.get("decision") in LIVE:
        return f"v{record.get('version')} promoted" + _against(record)
    if kind == "rollback":
        return f"rolled back v{record.get('from')} -> v{record.get('to')} ({record.get('trigger', record.get('reason'))})"
    if kind == "world_changed":
        return (f"world changed: v{record.get('version')} {_num(record.get('live_recent_accuracy'))} and "
                f"v{record.get('target')} {_num(record.get('target_recent_accuracy'))} on {record.get('n')} recent rows "
                f"(held-out {_num(record.get('live_heldout_accuracy'))}, {_num(record.get('target_heldout_accuracy'))})")
    if kind == "reached":
        return f"reached held-out {_num(record.get('heldout_accuracy'))} with v{record.get('version')}"
    if kind == "solved":
        return f"solved: confirmed greedy return {_num(record.get('confirm_return'))}"
    return None


def _against(record: dict[str, Any]) -> str:
    acc, parent = record.get("heldout_accuracy"), record.get("parent_heldout_accuracy")
    if acc is None:
        return f" over v{record.get('parent')}: {record.get('reason', '')}".rstrip(": ")
    was = f" (v{record.get('parent')} {_num(parent)})" if parent is not None else ""
    return f": held-out {_num(acc)}{was}"


def _num(value: Any) -> str:
    return f"{value:.3f}" if isinstance(value, float) else str(value)
