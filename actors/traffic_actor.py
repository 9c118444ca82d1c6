"""The Ray shell of a traffic worker (actors/traffic.py): one simulated user population per actor.

Ray restarts it without limit; a restarted actor builds its worker again from
the config and starts sending at once.
"""

from __future__ import annotations

from typing import Any

import ray

from actors.client_threads import WorkerShell
from actors.crash_backoff import CrashBackoff
from actors.traffic import TrafficWorker
from core.config.data import DataSection, TrafficSection


@ray.remote(max_restarts=-1, max_concurrency=4)
class TrafficActor(WorkerShell):
    """A TrafficWorker on the traffic split of the configured data; starts at once (and after a restart)."""

    def __init__(self, base_url: str, traffic: dict, data: dict, actor_id: str, *, seed: int = 0,
                 shard: tuple[int, int] = (0, 1), poison: bool = False, autostart: bool = True, **kwargs: Any):
        d = DataSection.model_validate(data)
        self.worker = TrafficWorker.from_data(base_url, d.load(), TrafficSection.model_validate(traffic), order=d.order,
                                              seed=seed, shard=shard, group_order=d.group_order,
                                              group_rows=d.group_rows, actor_id=actor_id,
                                              poison=poison, on_crash=CrashBackoff(actor_id).fail,
                                              **{"await_route": True, **kwargs})
        if autostart:
            self.worker.start()

    def set_poison(self, flag: bool) -> None:
        self.worker.set_poison(flag)
