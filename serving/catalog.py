"""What `GET /v1/models` answers: every policy, its versions, which is live, lineage, candidates in flight."""

from __future__ import annotations

from typing import Any

from core.storage.registry import PolicyRegistry


IN_FLIGHT_STAGES = ("shadow", "canary")  # the gate's stages on live traffic (gate/stages/shadow.py, canary.py)


def describe_policies(registry: PolicyRegistry, max_versions: int = 20) -> dict[str, Any]:
    """A JSON-ready view of the registry; the newest `max_versions` of each policy.  `in_flight`: the
    candidates a gate stage on live traffic holds now, with that stage and the earlier stages' evidence."""
    policies = []
    for policy_id in registry.policies():
        versions = registry.versions(policy_id)
        stages = registry.stages(policy_id)
        live = (stages.get("live") or {}).get("version")
        canary = (stages.get("canary") or {}).get("version")  # a candidate on live traffic now
        shadow = (stages.get("shadow") or {}).get("version")  # a candidate answering beside live now
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
                    "shadow": v == shadow,
                }
            )
        policies.append(
            {
                "policy_id": policy_id,
                "live_version": live,
                "latest_version": versions[-1] if versions else None,
                "num_versions": len(versions),
                "stages": {name: entry.get("version") for name, entry in stages.items()},
                "in_flight": _in_flight(registry, policy_id, stages),
                "versions": shown,
            }
        )
    return {"policies": policies}


def _in_flight(registry: PolicyRegistry, policy_id: str, stages: dict[str, Any]) -> list[dict[str, Any]]:
    out = []
    for stage in IN_FLIGHT_STAGES:
        version = (stages.get(stage) or {}).get("version")
        if version is not None:
            gate = registry.get(policy_id, version).gate or {}
            out.append({"version": version, "stage": stage, "reason": gate.get("reason"),
                        "evidence": gate.get("stages", [])})
    return out
