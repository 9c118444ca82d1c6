"""`RLGateActor`: the RL publish gate (serving/rl_gate.py) in a Ray actor, one per policy.

The learner holds its handle as its publisher (the same `publish.remote` call);
`/act` clients hand it finished episodes; policy replicas report a version they cannot answer
from (`unservable`); the loop drains its events into
events.jsonl and reads its summary.
"""

from __future__ import annotations

import threading
import time
from collections import deque
from typing import Any

import ray

from core.stats.exploration import ExplorationSection
from core.config.rl_gate import RLGateSection
from serving.rl_gate import RLGate


def rl_gate_name(policy_id: str) -> str:
    return f"evolve-rl-gate-{policy_id}"


# Episodes arrive in their own group, one at a time: the learner's candidates and the driver's
# queries get threads however many episodes queue up.
@ray.remote(num_cpus=0, max_restarts=-1, max_concurrency=4, concurrency_groups={"episodes": 1})
class RLGateActor:
    def __init__(self, registry_uri: str, gate: dict, spec: dict, exploration: dict, publisher_name: str,
                 return_range: tuple[float, float], seed: int = 0, max_events: int = 10_000):
        import torch

        torch.set_num_threads(1)
        self._events: deque[dict] = deque(maxlen=max_events)
        self._lock = threading.Lock()
        self.gate = RLGate(registry_uri, RLGateSection.model_validate(gate), spec,
                           ExplorationSection.model_validate(exploration), ray.get_actor(publisher_name),
                           tuple(return_range), emit=self._buffer, seed=seed)

    def _buffer(self, kind: str, **fields: Any) -> None:
        with self._lock:
            self._events.append({"event": kind, "time": time.time(), **fields})

    def publish(self, policy_id: str, weights: dict, metadata: dict | None = None, spec: dict | None = None,
                published_at: float | None = None) -> int | None:
        return self.gate.publish(policy_id, weights, metadata, spec, published_at)

    @ray.method(concurrency_group="episodes")
    def episode(self, policy_id: str, episode: dict) -> None:
        self.gate.episode(policy_id, episode)

    def unservable(self, policy_id: str, version: int, reason: str) -> dict | None:
        """A policy replica cannot answer from `version` (serving/policy_server.py reports it)."""
        return self.gate.unservable(policy_id, version, reason)

    def close(self, policy_id: str) -> None:
        self.gate.close(policy_id)

    def drain_events(self) -> list[dict]:
        with self._lock:
            out = list(self._events)
            self._events.clear()
        return out

    def canary(self) -> dict | None:
        return self.gate.canary()

    def summary(self) -> dict:
        return self.gate.summary()
