"""What the gate needs from the publisher: two blocking calls (a Ray handle's shell is cluster/gate_actor.py's)."""

from __future__ import annotations

from typing import Any, Protocol


class Publisher(Protocol):
    def publish(self, policy_id: str, weights: dict[str, Any], metadata: dict[str, Any], spec: dict | None,
                files: dict[str, bytes]) -> int:
        """Store a version and make it live on every subscriber; its version number."""

    def restore(self, policy_id: str, weights: dict[str, Any], version: int, spec: dict | None) -> None:
        """Make a stored version live on every subscriber."""
