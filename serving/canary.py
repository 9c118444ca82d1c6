"""A feedback replica's canary: the version the gate's `canary` stage points at, and who gets it.

    refresh() (every second, off the event loop) -> the registry's `canary` stage changed?
        -> load that version (or drop it when the stage is cleared: 100 % back on live)
    routes(client_key) -> answer this request with the canary?  A stable hash of the client
        key and the canary version against `fraction`: a client stays on one side for the
        whole canary (sticky), and each canary draws its own clients.  A request without a
        key is routed by a fresh random draw (not sticky).

Plain logic; `serving/feedback_app.py` calls it, tests drive it with a registry on disk.
"""

from __future__ import annotations

import asyncio
import logging
import random
from typing import Any

from core.hashing import stable_unit_hash
from core.registry import PolicyRegistry
from core.text_classifier import from_version

log = logging.getLogger(__name__)
STAGE = "canary"


class CanaryFollower:
    def __init__(self, registry_uri: str, policy_id: str, fraction: float):
        self.registry = PolicyRegistry(registry_uri, create=False)
        self.policy_id, self.fraction = policy_id, fraction
        self.current: Any = None  # serving.classify.Served of the canary version, or None

    def refresh(self, served_type: Any) -> int | None:
        entry = self.registry.stages(self.policy_id).get(STAGE) or {}
        version = entry.get("version")
        if version is None:
            self.current = None
        elif self.current is None or self.current.version != version:
            loaded = self.registry.load(self.policy_id, version, as_numpy=True)
            self.current = served_type(from_version(loaded.weights, loaded.files), version)
        return version

    def routes(self, client_key: str | None) -> Any:
        """The canary's Served when this request goes to it, else None."""
        canary = self.current
        if canary is None:
            return None
        draw = random.random() if not client_key else stable_unit_hash(f"{client_key}#canary-v{canary.version}")
        return canary if draw < self.fraction else None


async def follow(follower: CanaryFollower, served_type: Any, interval_s: float = 1.0) -> None:
    while True:
        try:
            await asyncio.to_thread(follower.refresh, served_type)
        except asyncio.CancelledError:
            raise
        except Exception as exc:  # keep the canary we have (or none); the next read tries again
            log.warning("canary: following %s failed (%s); retrying", follower.policy_id, exc)
        await asyncio.sleep(interval_s)
