"""The actors of one loop (rollout or traffic actors), polled and stopped together.

Every actor answers `stats()` (a dict with an `incarnation` id) and `stop()`.
An actor that is restarting misses a poll and keeps its last figures; one
that restarted counts from zero again, so the counters of its earlier lives
are carried in `base_<counter>` and `total()` adds them back.  `restarted()`
hands over the restarts noticed since it was last asked (the loop reports them).
"""

from __future__ import annotations

from typing import Any

import ray


class ActorGroup:
    def __init__(self, name: str, counters: tuple[str, ...] = ()):
        self.name, self.counters = name, counters
        self.handles: list[Any] = []
        self.stats: dict[int, dict[str, Any]] = {}
        self.restarts: dict[int, int] = {}  # actor index -> restarts noticed
        self._noticed: list[dict[str, Any]] = []

    def add(self, handle: Any) -> None:
        self.handles.append(handle)

    def poll(self, timeout_s: float = 5.0) -> None:
        self._collect({i: h.stats.remote() for i, h in enumerate(self.handles)}, timeout_s)

    def stop(self, timeout_s: float = 15.0) -> None:
        """Ask each actor to stop; an actor whose `stop()` answers with figures has them kept."""
        self._collect({i: h.stop.remote() for i, h in enumerate(self.handles)}, timeout_s)

    def kill(self) -> None:
        for handle in self.handles:
            ray.kill(handle, no_restart=True)

    def total(self, key: str) -> float:
        return sum(s.get(key, 0) + s.get(f"base_{key}", 0) for s in self.stats.values())

    def restarted(self) -> list[dict[str, Any]]:
        """Restarts noticed since the last call: actor index, its id, the new incarnation, restarts so far."""
        out, self._noticed = self._noticed, []
        return out

    def values(self, key: str) -> list[Any]:
        return [s.get(key) for s in self.stats.values()]

    def _collect(self, refs: dict[int, Any], timeout_s: float) -> None:
        if not refs:
            return
        ready, _ = ray.wait(list(refs.values()), num_returns=len(refs), timeout=timeout_s)
        for i, ref in refs.items():
            if ref not in ready:
                continue
            try:
                stats = ray.get(ref)
            except ray.exceptions.RayActorError:
                continue  # restarting after a crash: its last figures stand
            if isinstance(stats, dict):
                self.stats[i] = self._carry(i, self.stats.get(i, {}), stats)

    def _carry(self, i: int, prev: dict[str, Any], stats: dict[str, Any]) -> dict[str, Any]:
        restarted = bool(prev) and stats.get("incarnation") != prev.get("incarnation")
        if restarted:
            self.restarts[i] = self.restarts.get(i, 0) + 1
            self._noticed.append({"actor": i, "actor_id": stats.get("actor_id"), "incarnation": stats.get("incarnation"),
                                  "restarts": self.restarts[i]})
        for key in self.counters:
            base = prev.get(f"base_{key}", 0)
            stats[f"base_{key}"] = base + prev.get(key, 0) if restarted else base
        return stats
