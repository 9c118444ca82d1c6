"""A replica's background task that keeps re-reading something the registry holds (a gate stage's
version, the novelty scorer), off the event loop, forever: a failed read keeps what the replica has."""

from __future__ import annotations

import asyncio
import logging
from typing import Any, Callable

log = logging.getLogger(__name__)


async def keep_refreshed(refresh: Callable[[], Any], what: str, interval_s: float) -> None:
    while True:
        try:
            await asyncio.to_thread(refresh)
        except asyncio.CancelledError:
            raise
        except Exception as exc:  # keep the version we have (or none); the next read tries again
            log.warning("%s: refresh failed (%s); retrying", what, exc)
        await asyncio.sleep(interval_s)
