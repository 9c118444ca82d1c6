"""POST to a served app with retries on transient failures: what the simulated clients share.

A transient failure (a status in `RETRY_STATUS`: 503 while replicas swap or restart, 429, 502 /
504; a refused, dropped or timed-out connection) is retried with jittered exponential backoff, or
after the server's `retry-after` seconds, up to `max_retries` times; any other 4xx is final (the
request will not get better: 404 unknown event, 410 expired).  Every failure is counted by kind
of request and what went wrong, every retry too; nothing a server does raises.  The poster shares
its owner's lock, random stream and error counts, so the owner's figures stay in one place.
"""

from __future__ import annotations

import random
import threading
from typing import Any

import httpx

from actors.crash_backoff import RETRY_STATUS


class RetryingPoster:
    def __init__(self, client: httpx.Client, stop: threading.Event, lock: threading.Lock, rng: random.Random,
                 errors: dict[str, dict[str, int]], *, max_retries: int = 6, backoff_s: float = 0.05,
                 max_backoff_s: float = 2.0):
        self.client, self.stop, self.lock, self.rng, self.errors = client, stop, lock, rng, errors
        self.max_retries, self.backoff_s, self.max_backoff_s = max_retries, backoff_s, max_backoff_s
        self.retries = 0

    def post(self, kind: str, url: str, body: dict[str, Any], headers: dict[str, str] | None = None) -> Any | None:
        """The JSON reply, or None (counted under errors[kind]) once retrying cannot help."""
        for attempt in range(self.max_retries + 1):
            retry_after = None
            try:
                resp = self.client.post(url, json=body, headers=headers)
            except httpx.TransportError as exc:  # refused, reset, timed out
                self.count(kind, "timeout" if isinstance(exc, httpx.TimeoutException) else "connection")
            else:
                if resp.status_code < 300:
                    try:
                        return resp.json()
                    except ValueError:
                        self.count(kind, "bad_json")
                        return None
                self.count(kind, str(resp.status_code))
                if resp.status_code not in RETRY_STATUS:
                    return None
                retry_after = retry_after_s(resp.headers.get("retry-after"))
            if attempt == self.max_retries or self.stop.is_set():
                return None
            with self.lock:
                self.retries += 1
                jitter = self.rng.uniform(0.5, 1.5)
            pause = min(self.max_backoff_s, self.backoff_s * 2**attempt * jitter)
            self.stop.wait(min(self.max_backoff_s, retry_after) if retry_after is not None else pause)
        return None

    def count(self, kind: str, what: str) -> None:
        with self.lock:
            bump(self.errors.setdefault(kind, {}), what)


def retry_after_s(value: str | None) -> float | None:
    try:
        return max(0.0, float(value)) if value is not None else None
    except ValueError:
        return None  # an HTTP date: use our own backoff


def bump(counts: dict[str, int], key: str) -> None:
    counts[key] = counts.get(key, 0) + 1
