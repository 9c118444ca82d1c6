"""What every simulated-client worker shares: its threads, and the Ray shell around it.

`ClientThreads` runs `concurrency` threads of `_work()`; a bug in one (not a bad
answer, which `_work` handles) is kept as `last_error` and handed to `on_crash`
(the actor's CrashBackoff: Ray restarts the actor), or raised in a test.
`_users` is the `_work` of simulated users: `one_user()` at the configured pace until stopped,
after the app's readiness route answers.  `WorkerShell` is the methods a client actor exposes
over its worker.
"""

from __future__ import annotations

import os
import threading
import time
from typing import Any, Callable

import httpx

from actors.http_retry import bump


class ClientThreads:
    """A base for a worker that sets `cfg.concurrency` and `cfg.requests_per_s`, `actor_id`, `client`
    (httpx), `_stop` (an Event), `_lock`, `on_crash`, `last_error`, `_threads` and `_next_slot`, and
    implements `_work()`."""

    def start(self) -> None:
        if any(t.is_alive() for t in self._threads):
            return
        self._stop.clear()
        self._threads = [threading.Thread(target=self._run_thread, daemon=True, name=f"{self.actor_id}-{k}")
                         for k in range(self.cfg.concurrency)]
        for t in self._threads:
            t.start()

    def stop(self, timeout_s: float = 10.0) -> None:
        self._stop.set()
        deadline = time.monotonic() + timeout_s
        for t in self._threads:
            t.join(timeout=max(0.0, deadline - time.monotonic()))

    def running(self) -> bool:
        return any(t.is_alive() for t in self._threads)

    def close(self) -> None:
        self.stop()
        self.client.close()

    def _work(self) -> None:
        raise NotImplementedError

    def _users(self, error_kind: str, more: Callable[[], bool] = lambda: True) -> None:
        """`one_user()` after another at `cfg.requests_per_s` until stopped (or `more()` is false); an
        exception in one is kept as `last_error` and counted under `errors[error_kind]`."""
        if getattr(self, "await_route", False):
            self._await_ready()
        while not self._stop.is_set() and more():
            wait = self._reserve_slot()
            if wait > 0 and self._stop.wait(wait):
                return
            try:
                self.one_user()
            except Exception as exc:  # never let one bad answer end the traffic
                with self._lock:
                    self.last_error = f"{type(exc).__name__}: {' '.join(str(exc).split())[:200]}"
                    bump(self.errors[error_kind], "exception")
                self._stop.wait(0.05)

    def _await_ready(self, timeout_s: float = 600.0) -> None:
        """Until the app's readiness route (`ready_url`) answers 200 (a version is live)."""
        deadline = time.monotonic() + timeout_s
        while not self._stop.is_set() and time.monotonic() < deadline:
            try:
                if self.client.get(self.ready_url).status_code == 200:
                    return
            except httpx.HTTPError:
                pass
            self._stop.wait(0.25)

    def _reserve_slot(self) -> float:
        """Seconds to wait before the next request: `cfg.requests_per_s` across all threads (None: none)."""
        if self.cfg.requests_per_s is None:
            return 0.0
        with self._lock:
            now = time.monotonic()
            slot = max(now, self._next_slot)
            self._next_slot = slot + 1.0 / self.cfg.requests_per_s
            return slot - now

    def _run_thread(self) -> None:
        try:
            self._work()
        except Exception as exc:  # a bug, not a bad answer: the thread would end silently
            with self._lock:
                self.last_error = f"{type(exc).__name__}: {exc}"
            if self.on_crash is None:
                raise
            self.on_crash(exc)


class WorkerShell:
    """A client actor's methods over its `worker` (a ClientThreads with `stats()`)."""

    worker: Any

    def start(self) -> None:
        self.worker.start()

    def stop(self) -> dict[str, Any]:
        self.worker.stop()
        return self.worker.stats()

    def stats(self) -> dict[str, Any]:
        return self.worker.stats()

    def pid(self) -> int:
        return os.getpid()
