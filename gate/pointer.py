"""A policy's live pointer moved safely: promote over what is live, roll back; the gate and `evolve rollback` share it.

Rollback marks the version it leaves (`info.rolled_back`), so a later automatic
rollback never goes "back" to a version that was already rolled back from.
"""

from __future__ import annotations

import time
from typing import Any

from core.storage.registry import PolicyNotFound, PolicyRegistry, StageConflict

ROLLED_BACK = "rolled_back"  # key in a version's metadata.info once it was rolled back from


class GateError(RuntimeError):
    """The gate cannot do what was asked (nothing to start from, nothing to roll back to)."""


def promote_over(registry: PolicyRegistry, policy_id: str, version: int, live: int | None) -> bool:
    """Make `version` live only if `live` still is (compare-and-swap); False if another writer
    (a rollback, the CLI, another gate) moved the pointer since the candidate was judged against it."""
    try:
        registry.promote(policy_id, version, expect=live)
    except StageConflict:
        return False
    return True


def rollback_target(registry: PolicyRegistry, policy_id: str, stage: str = "live") -> int | None:
    """The most recent earlier live version that was not itself rolled back from; None if none."""
    entry = registry.stages(policy_id).get(stage) or {}
    current = entry.get("version")
    for v in reversed(entry.get("history", [])):
        if v != current and ROLLED_BACK not in registry.get(policy_id, v).info:
            return v
    return None


def rollback_registry(registry: PolicyRegistry | str, policy_id: str, to: int | None = None,
                      reason: str = "manual", stage: str = "live") -> dict[str, Any]:
    """Move the live pointer back (to `to`, or `rollback_target`) and mark the version it leaves.

    Works on a registry URI alone (no Ray): this is what `evolve rollback` runs when no run is
    live (it refuses while one is: `core.storage.registry_lease`).  A running publisher does not see the
    pointer move by itself; a live run's gate (`Gate.rollback`) tells it.
    """
    reg = PolicyRegistry(registry) if isinstance(registry, str) else registry
    current = (reg.stages(policy_id).get(stage) or {}).get("version")
    if current is None:
        raise PolicyNotFound(f"policy {policy_id!r} has no {stage!r} version to roll back from")
    if to is None:
        to = rollback_target(reg, policy_id, stage)
        if to is None:
            raise GateError(f"policy {policy_id!r}: no earlier {stage} version to roll back to (v{current} is the first)")
    elif to == current:
        raise GateError(f"policy {policy_id!r}: v{to} is already {stage}")
    target = reg.get(policy_id, to)  # raises PolicyNotFound for a version that does not exist
    # the pointer first (a crash after it leaves only a missing mark), compare-and-swap: a writer
    # that moved it since `current` was read makes this a StageConflict, never a lost update
    reg.rollback(policy_id, to=to, stage=stage, expect=current)
    left = reg.get(policy_id, current)
    reg.update_metadata(policy_id, current, info={**left.info, ROLLED_BACK: {"at": time.time(), "to": to, "reason": reason}})
    if ROLLED_BACK in target.info:  # explicitly made live again: no longer "bad"
        reg.update_metadata(policy_id, to, info={k: v for k, v in target.info.items() if k != ROLLED_BACK})
    return {"policy_id": policy_id, "from": current, "to": to, "reason": reason}
