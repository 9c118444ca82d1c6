"""What the gate needs from the publisher: two blocking calls, over a Ray actor handle or a test fake."""

from __future__ import annotations

from typing import Any, Protocol

import ray


class Publisher(Protocol):
    """What the gate needs from the publisher (blocking calls; see `RayPublisher`)."""

    def publish(self, policy_id: str, weights: dict[str, Any], metadata: dict[str, Any], spec: dict | None,
                files: dict[str, bytes]) -> int: ...

    def restore(self, policy_id: str, weights: dict[str, Any], version: int, spec: dict | None) -> None: ...


class RayPublisher:
    """A `PolicyPublisher` actor handle as blocking calls (the gate runs in a threaded actor)."""

    def __init__(self, handle: Any, timeout_s: float = 300.0):
        self.handle, self.timeout_s = handle, timeout_s

    def publish(self, policy_id, weights, metadata, spec, files) -> int:
        ref = self.handle.publish.remote(policy_id, weights, metadata, spec=spec, files=files)
        return int(ray.get(ref, timeout=self.timeout_s))

    def restore(self, policy_id, weights, version, spec) -> None:
        ray.get(self.handle.restore.remote(policy_id, weights, version, spec), timeout=self.timeout_s)


def as_publisher(obj: Any) -> Publisher:
    """A Ray actor handle gets wrapped; anything else (a test fake) is used as it is."""
    return RayPublisher(obj) if hasattr(getattr(obj, "publish", None), "remote") else obj
