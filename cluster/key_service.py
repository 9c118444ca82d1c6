"""The run's key book (core/auth/key_book.py) in a named Ray actor on the driver's node.

The driver starts it once Ray is up, when serving.auth is on; every replica finds it by
the name its guard settings carry (serving/auth_guard.py) and asks it for news every
second. It reads the keys file on the driver's node, where `evolve keys revoke` edits it,
or the driver's `keys_env` JSON, which is fixed for the run: revocation and rotation reach
every replica on every node without the file on their disks.
"""

from __future__ import annotations

import os
import time
import uuid
from typing import Any

import ray
from ray.util.scheduling_strategies import NodeAffinitySchedulingStrategy

from core.auth.keys import AuthSection, KeyStore
from core.auth.key_book import KeyBook, News

REFRESH_S = 1.0  # how often the book re-reads the file
FOLLOW_S = 1.0  # how often each replica asks the book


@ray.remote(num_cpus=0, max_restarts=-1, max_task_retries=-1)
class KeyService:
    def __init__(self, keys_file: str, snapshot: str, env_text: str | None, refresh_s: float = REFRESH_S):
        if env_text is not None:
            read = lambda: env_text  # noqa: E731 (the driver's environment, as the run started)
        else:
            read = KeyStore(keys_file, snapshot=snapshot).text
        self.book = KeyBook(read, refresh_s, first_version=time.time_ns())

    def since(self, version: int) -> News:
        return self.book.since(version)

    def status(self) -> dict:
        return self.book.status()


def start_key_service(settings: dict[str, Any], section: AuthSection, run_name: str,
                      refresh_s: float = REFRESH_S, follow_s: float = FOLLOW_S) -> tuple[dict[str, Any], Any]:
    """Start the run's key book beside the driver; returns the guard settings that point replicas
    at it, and its handle (it ends with the driver)."""
    ctx = ray.get_runtime_context()
    name = f"evolve-keys-{run_name}-{uuid.uuid4().hex[:8]}"
    env_text = os.environ.get(section.keys_env) if section.keys_env else None
    actor = KeyService.options(
        name=name, scheduling_strategy=NodeAffinitySchedulingStrategy(ctx.get_node_id(), soft=False),
    ).remote(str(section.keys_file.expanduser()), settings["snapshot"], env_text, refresh_s)
    ray.get(actor.status.remote(), timeout=120)
    book = {"name": name, "namespace": ctx.namespace, "every_s": follow_s}
    return {**settings, "book": book}, actor
