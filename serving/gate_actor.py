"""`GateActor`: the publish gate (`serving/gate.py`) in a Ray actor, named per policy by the loop."""

from __future__ import annotations

import threading
import time
from collections import deque
from typing import Any

import ray

from core.config.adapt import AdaptSection
from core.config.feedback import DataSection, GateSection
from serving.gate import EmitFn, PublishGate


def gate_name(policy_id: str) -> str:
    """The gate actor's name: the feedback joiner finds it by this name."""
    return f"evolve-gate-{policy_id}"


# The joiner's fire-and-forget calls (observe, check_window) run one at a time in their own group:
# however many queue up, the driver's queries and the learner's candidates still get threads.
@ray.remote(num_cpus=0.5, max_restarts=-1, max_concurrency=4, concurrency_groups={"feedback": 1})
class GateActor:
    """`PublishGate` in an actor.  Threaded (max_concurrency 4): `summary`, `drain_events` and
    `check_prequential` are answered while a candidate is scored; candidates themselves run one at
    a time (newest wins).  No task retries: `submit` is not idempotent.  After a restart the
    registry still says what is live; the decision list starts over (events.jsonl keeps all)."""

    def __init__(self, registry_uri: str, data: dict | DataSection, gate: dict | GateSection, publisher_name: str,
                 spec: dict | None = None, emit: EmitFn | None = None, torch_threads: int | None = None,
                 max_events: int = 10_000, adapt: dict | None = None):
        """Names, not objects: held-out rows or an actor handle would be constructor
        arguments in the object store, which a restart cannot count on (ray#53727).  `data` is the
        `feedback.data` section; the held-out rows are read here, and again after a restart."""
        if torch_threads:
            import torch

            torch.set_num_threads(torch_threads)
        self._events: deque[dict] = deque(maxlen=max_events)
        self._lock = threading.Lock()
        cfg = gate if isinstance(gate, GateSection) else GateSection.model_validate(gate)
        loaded = DataSection.model_validate(data).load()
        publisher = ray.get_actor(publisher_name)
        self.gate = PublishGate(registry_uri, loaded.heldout, cfg, publisher=publisher, emit=emit or self._buffer,
                                spec=spec, adapt=AdaptSection.model_validate(adapt or {}), groups=loaded.heldout_groups)

    def _buffer(self, kind: str, **fields: Any) -> None:
        with self._lock:
            self._events.append({"event": kind, "time": time.time(), **fields})

    def drain_events(self) -> list[dict]:
        """Buffered events (when no `emit` was given), oldest first; the driver writes them to events.jsonl."""
        with self._lock:
            out = list(self._events)
            self._events.clear()
        return out

    def bootstrap(self, policy_id: str, weights: dict | None = None, files: dict | None = None,
                  metadata: dict | None = None) -> dict:
        return self.gate.bootstrap(policy_id, weights=weights, files=files, metadata=metadata)

    def submit(self, policy_id: str, weights: dict, files: dict, metadata: dict | None = None) -> dict:
        return self.gate.submit(policy_id, weights, files, metadata)

    def rollback(self, policy_id: str, to: int | None = None, reason: str = "manual") -> dict:
        return self.gate.rollback(policy_id, to, reason)

    @ray.method(concurrency_group="feedback")
    def check_prequential(self, policy_id: str, version: int, correct_flags: list[bool]) -> dict:
        return self.gate.check_prequential(policy_id, version, correct_flags)

    @ray.method(concurrency_group="feedback")
    def check_window(self, policy_id: str, version: int, correct: float, n: int, clients: int | None = None) -> dict:
        return self.gate.check_window(policy_id, version, correct, n, clients)

    @ray.method(concurrency_group="feedback")
    def observe(self, policy_id: str, pairs: list, events: int, recent: list = (), inputs: list = ()) -> list[dict]:
        return self.gate.observe(policy_id, [tuple(p) for p in pairs], events, [tuple(r) for r in recent],
                                 [tuple(i) for i in inputs])

    @ray.method(concurrency_group="feedback")
    def offpolicy(self, policy_id: str, rows: list) -> int:
        return self.gate.offpolicy(policy_id, rows)

    @ray.method(concurrency_group="feedback")
    def shadow_rows(self, policy_id: str, rows: list) -> int:
        return self.gate.shadow_rows(policy_id, rows)

    def shadow(self, policy_id: str) -> dict | None:
        return self.gate.shadow(policy_id)

    def canary(self, policy_id: str) -> dict | None:
        return self.gate.canary(policy_id)

    def adaptation(self, policy_id: str) -> dict | None:
        return self.gate.adaptation(policy_id)

    def group_accuracy(self, policy_id: str, version: int | None = None) -> dict:
        return self.gate.group_accuracy(policy_id, version)

    def summary(self, policy_id: str | None = None) -> dict:
        return self.gate.summary(policy_id)
