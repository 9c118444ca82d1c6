"""`GateActor`: the publish gate (gate/gate.py) in a named Ray actor, one per policy; a thin shell.

    a classifier's learner   submit.remote(policy_id, weights, files, metadata): a decision, in turn
    a Q-learner              publish.remote(policy_id, weights, metadata, spec, published_at): the
                             publisher's own call; the version stored, or None (refused unstored, dropped)
    joiner, /act clients, policy replicas   evidence.remote(policy_id, items): one call, its own thread
    the loop                 bootstrap, drain_events, summary, stage, adaptation, group_accuracy, close
    `evolve rollback`        rollback.remote(policy_id, to, reason): found by its name, gate_name(policy)
"""

from __future__ import annotations

import threading
import time
from collections import deque
from typing import Any

import ray

from cluster.errors import UserError
from core.config.adapt import AdaptSection
from core.config.gate import GateSection
from gate import Gate, GateError
from gate.kinds import kind_class, kind_for
from gate.stage import check_stages


def gate_name(policy_id: str) -> str:
    """The gate actor's name: the joiner, the clients and `evolve rollback` find it by this name."""
    return f"evolve-gate-{policy_id}"


def check_gate(section: GateSection, kind: str, loop_section: str) -> None:
    """A stage list or stage section the gate cannot run is the user's config error, said before Ray starts."""
    try:
        check_stages(section, kind_class(kind).gives, kind)
    except GateError as exc:
        raise UserError(f"{loop_section}.{exc}") from None


class RayPublisher:
    """A `PolicyPublisher` actor handle as the gate's blocking calls (the gate runs in a threaded actor)."""

    def __init__(self, handle: Any, timeout_s: float = 300.0):
        self.handle, self.timeout_s = handle, timeout_s

    def publish(self, policy_id, weights, metadata, spec, files) -> int:
        ref = self.handle.publish.remote(policy_id, weights, metadata, spec=spec, files=files)
        return int(ray.get(ref, timeout=self.timeout_s))

    def restore(self, policy_id, weights, version, spec) -> None:
        ray.get(self.handle.restore.remote(policy_id, weights, version, spec), timeout=self.timeout_s)


# Evidence runs one call at a time in its own group: however many pushes queue up, the driver's
# queries and the learner's candidates still get threads.
@ray.remote(num_cpus=0.5, max_restarts=-1, max_concurrency=4, concurrency_groups={"evidence": 1})
class GateActor:
    """`Gate` in an actor.  Threaded: `summary`, `drain_events` and evidence are answered while a
    candidate is judged; candidates themselves run one at a time.  No task retries: `submit` is not
    idempotent.  After a restart the registry still says what is live; the decisions start over
    (events.jsonl keeps them all)."""

    def __init__(self, registry_uri: str, kind: str, kind_args: dict, gate: dict, publisher_name: str,
                 adapt: dict | None = None, seed: int = 0, torch_threads: int = 1, max_events: int = 10_000):
        """Names and dicts, not objects: held-out rows or an actor handle would be constructor
        arguments in the object store, which a restart cannot count on (ray#53727).  `kind_args`
        are the kind's (gate/kinds/): a classifier's `data` section (its held-out rows are read here,
        again after a restart), a Q-policy's spec, serving exploration and return range."""
        import torch

        torch.set_num_threads(torch_threads)
        self._events: deque[dict] = deque(maxlen=max_events)
        self._lock = threading.Lock()
        self.gate = Gate(registry_uri, kind_for(kind, **kind_args), GateSection.model_validate(gate),
                         publisher=RayPublisher(ray.get_actor(publisher_name)), emit=self._buffer, seed=seed,
                         adapt=AdaptSection.model_validate(adapt) if adapt else None)

    def _buffer(self, kind: str, **fields: Any) -> None:
        with self._lock:
            self._events.append({"event": kind, "time": time.time(), **fields})

    def drain_events(self) -> list[dict]:
        """Buffered events, oldest first; the driver writes them to events.jsonl."""
        with self._lock:
            out = list(self._events)
            self._events.clear()
        return out

    def bootstrap(self, policy_id: str, weights: dict | None = None, files: dict | None = None,
                  metadata: dict | None = None) -> dict:
        return self.gate.bootstrap(policy_id, weights=weights, files=files, metadata=metadata)

    def submit(self, policy_id: str, weights: dict, files: dict, metadata: dict | None = None) -> dict:
        return self.gate.submit(policy_id, weights, files, metadata)

    def publish(self, policy_id: str, weights: dict, metadata: dict | None = None, spec: dict | None = None,
                published_at: float | None = None) -> int | None:
        return self.gate.submit(policy_id, weights, {}, metadata, wait=False)["version"]

    @ray.method(concurrency_group="evidence")
    def evidence(self, policy_id: str, items: list) -> dict:
        return self.gate.evidence(policy_id, items)

    def rollback(self, policy_id: str, to: int | None = None, reason: str = "manual") -> dict:
        return self.gate.rollback(policy_id, to, reason)

    def close(self, policy_id: str | None = None) -> None:
        self.gate.close(policy_id)

    def stage(self, policy_id: str, name: str) -> dict | None:
        return self.gate.stage(policy_id, name)

    def adaptation(self, policy_id: str) -> dict | None:
        return self.gate.adaptation(policy_id)

    def group_accuracy(self, policy_id: str, version: int | None = None) -> dict:
        return self.gate.group_accuracy(policy_id, version)

    def summary(self, policy_id: str | None = None) -> dict:
        return self.gate.summary(policy_id)
