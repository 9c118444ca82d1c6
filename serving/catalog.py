"""What `GET /v1/models` answers: every policy, its versions, which is live, lineage."""

from __future__ import annotations

from typing import Any

from core.registry import PolicyRegistry


def describe_policies(registry: PolicyRegistry, max_versions: int = 20) -> dict[str, Any]:
    """A JSON-ready view of the registry; the newest `max_versions` of each policy."""
    policies = []
    for policy_id in registry.policies():
        versions = registry.versions(policy_id)
        stages = registry.stages(policy_id)
        live = (stages.get("live") or {}).get("version")
        canary = (stages.get("canary") or {}).get("version")  # a candidate on live traffic now
        shown = []
        for v in versions[-max_versions:]:
            meta = registry.get(policy_id, v)
            shown.append(
                {
                    "version": v,
                    "parent_version": meta.parent_version,
                    "created_at": meta.created_at,
                    "metrics": meta.metrics,
                    "data_range": meta.data_range,
                    "gate": meta.gate,
                    "live": v == live,
                    "canary": v == canary,
                }
            )
        policies.append(
            {
                "policy_id": policy_id,
                "live_version": live,
                "latest_version": versions[-1] if versions else None,
                "num_versions": len(versions),
                "stages": {name: entry.get("version") for name, entry in stages.items()},
                "versions": shown,
            }
        )
    return {"policies": policies}
