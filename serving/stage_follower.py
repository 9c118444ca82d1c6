"""A replica's follower of a gate stage on live traffic: the version that stage points at, and who gets it.

    refresh() (every second, off the event loop) -> the registry's stage changed?
        -> load that version with the replica's own `load(weights, files, version)` (or drop it when
           the stage is cleared: every request back on live)
    routes(key) / route(keys) -> does this request (each row) go to the stage's version?
        sticky      (canary) a stable hash of the client key and the version against `fraction`: a
                    client stays on one side for the whole experiment, and each experiment draws its
                    own clients; a request without a key is routed by a fresh random draw
        not sticky  (shadow) a fresh random draw per request: the shadow answers beside live, the
                    client never sees it, so nothing needs to stay put

Plain logic: serving/feedback_app.py follows a classifier's canary and shadow with it, and
serving/policy_server.py a Q-policy's canary; tests drive it with a registry on disk.
"""

from __future__ import annotations

import random
from typing import Any, Callable, Mapping, Sequence

import numpy as np

from core.data.hashing import stable_unit_hash
from core.storage.registry import PolicyRegistry
from serving.refresh import keep_refreshed

# (weights, files, version) -> what answers for that version (with a `.version`), or None: not yet
Load = Callable[[Mapping[str, Any], Mapping[str, bytes], int], Any]


class StageFollower:
    def __init__(self, registry_uri: str, policy_id: str, fraction: float, load: Load, stage: str = "canary",
                 sticky: bool = True):
        self.registry = PolicyRegistry(registry_uri, create=False)
        self.policy_id, self.fraction, self.load, self.stage, self.sticky = policy_id, fraction, load, stage, sticky
        self.current: Any = None  # what answers for the stage's version, or None

    def refresh(self) -> int | None:
        entry = self.registry.stages(self.policy_id).get(self.stage) or {}
        version = entry.get("version")
        if version is None:
            self.current = None
        elif self.current is None or self.current.version != version:
            loaded = self.registry.load(self.policy_id, version, as_numpy=True)
            self.current = self.load(loaded.weights, loaded.files, version)
        return version

    def routes(self, client_key: str | None) -> Any:
        """The stage version's answerer when this request goes to it, else None."""
        current = self.current
        if current is None:
            return None
        return current if self._drawn(client_key, current.version) else None

    def route(self, keys: Sequence[str | None]) -> np.ndarray:
        """[B] bools: which rows (one client key each) the stage's version answers (all False without one)."""
        current = self.current
        if current is None:
            return np.zeros(len(keys), dtype=bool)
        return np.array([self._drawn(k, current.version) for k in keys], dtype=bool)

    def _drawn(self, key: str | None, version: int) -> bool:
        draw = stable_unit_hash(f"{key}#{self.stage}-v{version}") if self.sticky and key else random.random()
        return draw < self.fraction


async def follow(follower: StageFollower, interval_s: float = 1.0) -> None:
    await keep_refreshed(follower.refresh, f"{follower.stage} of {follower.policy_id}", interval_s)
