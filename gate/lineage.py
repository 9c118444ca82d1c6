"""What the gate writes into a version's registry metadata: the learner's fields plus its measurements."""

from __future__ import annotations

from typing import Any, Mapping

import numpy as np

REGISTRY_KEYS = ("parent_version", "metrics", "data_range", "gate", "info")  # core.storage.registry.PublishMetadata


def with_gate(metadata: dict, live: int | None, acc: float | None, live_acc: float | None, gate: dict) -> dict:
    """The learner's metadata plus the gate's measurements (lineage: parent defaults to the live version;
    `acc`, `live_acc`: held-out accuracies, for a kind that has a held-out set).

    The registry's metadata schema is strict and its metrics are finite floats (a NaN would be
    written as null and make metadata.json unreadable); what does not fit moves to `info`, so a
    learner's extra fields never cost a decision.
    """
    meta = {k: metadata[k] for k in REGISTRY_KEYS if k in metadata}
    info = dict(meta.get("info") or {})
    info.update({k: v for k, v in metadata.items() if k not in REGISTRY_KEYS})
    metrics, other = {}, {}
    for k, v in (meta.get("metrics") or {}).items():
        if isinstance(v, (int, float)) and not isinstance(v, bool) and np.isfinite(v):
            metrics[k] = float(v)
        else:
            other[k] = v if v is None or isinstance(v, (bool, str)) else repr(v)
    if other:
        info["metrics_not_numbers"] = other
    meta["info"] = info
    if meta.get("parent_version") is None and live is not None:
        meta["parent_version"] = live
    if acc is not None:
        metrics["heldout_accuracy"] = acc
    if live_acc is not None:
        metrics["parent_heldout_accuracy"] = live_acc
    meta["metrics"] = metrics
    meta["gate"] = gate
    return meta


def events_seen(metadata: Mapping[str, Any]) -> int | None:
    """How much feedback the candidate has learned from, for the curve: `data_range.events`, or the
    online learner's `data_range.total.fresh_rows` (distinct rows; rehearsal replays not counted)."""
    data_range = metadata.get("data_range") or {}
    for value in (data_range.get("events"), (data_range.get("total") or {}).get("fresh_rows")):
        if isinstance(value, int) and not isinstance(value, bool):
            return value
    return None
