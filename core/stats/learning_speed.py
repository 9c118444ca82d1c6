"""Learning speed as one figure: feedback events until held-out accuracy first reaches a share of its final value.

The curve is the live version's held-out accuracy at each change (start,
promotion, rollback), with the feedback events the version had learned from.
95% of the final value (`events_to_95pct` in summary.json) separates a loop
that learns from its first labels from one that needs the whole stream, and
it does not depend on where the final value lands.
"""

from __future__ import annotations

from typing import Any, Iterable, Mapping


def events_to_fraction(curve: Iterable[Mapping[str, Any]], final: float | None, fraction: float = 0.95) -> int | None:
    """Events of the first curve point at or above fraction * final; None without a final value or such a point."""
    if final is None:
        return None
    target = fraction * final
    for point in curve:
        acc = point.get("heldout_accuracy")
        if acc is not None and acc >= target:
            return int(point.get("events") or 0)  # the starting version's point carries no count: none learned
    return None
