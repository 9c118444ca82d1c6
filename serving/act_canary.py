"""A policy replica's canary: the version the RL gate's `canary` stage points at, and which rows get it.

    refresh() (every second, off the event loop) -> the registry's `canary` stage changed?
        -> load that version (or drop it when the stage is cleared: every row back on live)
    route(keys) -> for each row's client key: answered by the canary?  A stable hash of the key
        and the canary version against `fraction` (sticky: a client stays on one side for the
        whole canary, and each canary draws its own clients); a row without a key: a fresh draw.

Plain logic; `serving/policy_server.py` calls it.
"""

from __future__ import annotations

import asyncio
import logging
import random
from typing import Sequence

import numpy as np

from core.data.hashing import stable_unit_hash
from core.storage.registry import PolicyRegistry
from core.models.q import PolicySpec
from core.models.q_policy import QPolicy

log = logging.getLogger(__name__)
STAGE = "canary"


class ActCanary:
    def __init__(self, registry_uri: str, policy_id: str, fraction: float):
        self.registry = PolicyRegistry(registry_uri, create=False)
        self.policy_id, self.fraction = policy_id, fraction
        self.current: QPolicy | None = None

    def refresh(self, spec: PolicySpec | None) -> int | None:
        entry = self.registry.stages(self.policy_id).get(STAGE) or {}
        version = entry.get("version")
        if version is None or spec is None:
            self.current = None
        elif self.current is None or self.current.version != version:
            loaded = self.registry.load(self.policy_id, version)
            self.current = QPolicy(spec, loaded.weights, version)
        return version

    def route(self, keys: Sequence[str | None]) -> np.ndarray:
        """[B] bools: which rows the canary answers (all False without a canary)."""
        canary = self.current
        if canary is None:
            return np.zeros(len(keys), dtype=bool)
        return np.array([(stable_unit_hash(f"{k}#canary-v{canary.version}") if k else random.random()) < self.fraction
                         for k in keys], dtype=bool)


async def follow(canary: ActCanary, spec_of, interval_s: float = 1.0) -> None:
    """`spec_of()`: the live policy's spec once one is served (the canary has the same model)."""
    while True:
        try:
            await asyncio.to_thread(canary.refresh, spec_of())
        except asyncio.CancelledError:
            raise
        except Exception as exc:  # keep the canary we have (or none); the next read tries again
            log.warning("canary: following %s failed (%s); retrying", canary.policy_id, exc)
        await asyncio.sleep(interval_s)
