"""A feedback replica's canary (or shadow): the version a gate stage points at, and which requests get it.

    refresh() (every second, off the event loop) -> the registry's stage changed?
        -> load that version (or drop it when the stage is cleared: 100 % back on live)
    routes(client_key) -> does this request go to the stage's version?
        canary  a stable hash of the client key and the canary version against `fraction`: a
                client stays on one side for the whole canary (sticky), and each canary draws
                its own clients.  A request without a key is routed by a fresh random draw.
        shadow  (sticky=False) a fresh random draw per request: the shadow answers beside live,
                the client never sees it, so nothing needs to stay put

Plain logic; `serving/feedback_app.py` calls it, tests drive it with a registry on disk.
"""

from __future__ import annotations

import asyncio
import logging
import random
from typing import Any

from core.data.hashing import stable_unit_hash
from core.storage.registry import PolicyRegistry
from core.models.classifier import from_version

log = logging.getLogger(__name__)
STAGE = "canary"


class CanaryFollower:
    def __init__(self, registry_uri: str, policy_id: str, fraction: float, stage: str = STAGE, sticky: bool = True,
                 device: str = "cpu"):
        self.registry = PolicyRegistry(registry_uri, create=False)
        self.policy_id, self.fraction, self.stage, self.sticky = policy_id, fraction, stage, sticky
        self.device = device  # where the replica answers: its stage version sits beside live
        self.current: Any = None  # serving.classify.Served of the stage's version, or None

    def refresh(self, served_type: Any) -> int | None:
        entry = self.registry.stages(self.policy_id).get(self.stage) or {}
        version = entry.get("version")
        if version is None:
            self.current = None
        elif self.current is None or self.current.version != version:
            loaded = self.registry.load(self.policy_id, version, as_numpy=True)
            self.current = served_type(from_version(loaded.weights, loaded.files).place(self.device), version)
        return version

    def routes(self, client_key: str | None) -> Any:
        """The stage version's Served when this request goes to it, else None."""
        canary = self.current
        if canary is None:
            return None
        sticky = self.sticky and client_key
        draw = stable_unit_hash(f"{client_key}#{self.stage}-v{canary.version}") if sticky else random.random()
        return canary if draw < self.fraction else None


async def follow(follower: CanaryFollower, served_type: Any, interval_s: float = 1.0) -> None:
    while True:
        try:
            await asyncio.to_thread(follower.refresh, served_type)
        except asyncio.CancelledError:
            raise
        except Exception as exc:  # keep the version we have (or none); the next read tries again
            log.warning("%s: following %s failed (%s); retrying", follower.stage, follower.policy_id, exc)
        await asyncio.sleep(interval_s)
