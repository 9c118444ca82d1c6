"""A lease object on an object store: who holds a place, and until when.

    <place>/run.lease     {"run", "run_id", "pid", "host", "started_at", "renewed_at", "ttl_s", "token"}

Taken with a conditional create (core.storage.conditional_put), renewed every `ttl_s / 3`
by replacing the object only if it is still the one this holder wrote, released
by deleting it under the same condition.  A lease is stale `ttl_s` after its
last renewal by the reader's clock (so hosts' clocks must agree to well within
`ttl_s`), or at once when its holder ran on this host and that process is gone.
A stale lease is taken over by replacing exactly the object judged stale, so of
two processes taking over at once only one gets it.  A holder whose renewal
finds the object replaced has lost the lease and is told so (`on_lost`).
"""

from __future__ import annotations

import json
import logging
import os
import random
import socket
import threading
import time
import uuid
from typing import Any, Callable

from core.storage.conditional_put import ConditionalStore, Precondition

log = logging.getLogger(__name__)
DEFAULT_TTL_S = 30.0


class LeaseHeld(RuntimeError):
    """A live holder has the lease; `holder` is its record."""

    def __init__(self, path: str, holder: dict[str, Any]):
        self.path, self.holder = path, holder
        super().__init__(f"{path} is held by {describe(holder)}")


class LeaseLost(RuntimeError):
    """The lease was taken over by another holder (this one was judged stale)."""


def describe(holder: dict[str, Any]) -> str:
    """One phrase naming a holder: run 'x' (id .., pid .. on host, started ..)."""
    if not holder:
        return "another process (it is starting: its record is not written yet)"
    started = holder.get("started_at")
    when = time.strftime("%Y-%m-%d %H:%M:%S", time.localtime(started)) if isinstance(started, (int, float)) else "?"
    what = f"run {holder['run']!r}" if holder.get("run") else str(holder.get("what", "a process"))
    ident = f"id {holder['run_id']}, " if holder.get("run_id") else ""
    return f"{what} ({ident}pid {holder.get('pid', '?')} on {holder.get('host', '?')}, started {when})"


def stale_reason(holder: dict[str, Any], now: float) -> str | None:
    """Why a holder's lease no longer counts, or None while it is live."""
    try:
        renewed, ttl = float(holder["renewed_at"]), float(holder["ttl_s"])
    except (KeyError, TypeError, ValueError):
        return "its lease record is unreadable"
    if now - renewed > ttl:
        return f"its lease expired {now - renewed - ttl:.0f}s ago"
    if holder.get("host") == socket.gethostname() and not pid_alive(holder.get("pid")):
        return "its process is no longer running"
    return None


class ObjectLease:
    def __init__(self, fs: Any, path: str, holder: dict[str, Any], ttl_s: float = DEFAULT_TTL_S,
                 clock: Callable[[], float] = time.time):
        self.store, self.path, self.ttl_s, self.clock = ConditionalStore(fs), path, float(ttl_s), clock
        self.record = {**holder, "pid": os.getpid(), "host": socket.gethostname(), "ttl_s": self.ttl_s,
                       "token": uuid.uuid4().hex}
        self.record.setdefault("started_at", clock())
        self.tag: str | None = None
        self.on_lost: Callable[[str], None] | None = None
        self._stop = threading.Event()
        self._thread: threading.Thread | None = None

    def acquire(self) -> dict[str, Any] | None:
        """Take the lease; returns the stale holder taken over (with its `stale_because`), None
        when it was free.  Raises LeaseHeld while a live holder has it."""
        for _ in range(20):  # each pass loses only to another writer's success: a bound, not a wait
            try:
                self.tag = self.store.create(self.path, self._payload())
                return None
            except Precondition:
                pass
            found = self.store.read(self.path)
            if found is None:
                continue  # released meanwhile: try the create again
            holder = _parse(found[0])
            if holder.get("token") == self.record["token"]:
                self.tag = found[1]  # our own create, answered only on a retry of it
                return None
            why = stale_reason(holder, self.clock())
            if why is None:
                raise LeaseHeld(self.path, holder)
            try:
                self.tag = self.store.replace(self.path, self._payload(), found[1])
                return {**holder, "stale_because": why}
            except Precondition:
                continue  # renewed or taken by another meanwhile: look again
        raise LeaseHeld(self.path, _parse((self.store.read(self.path) or (b"{}", ""))[0]))

    def acquire_waiting(self, timeout_s: float) -> dict[str, Any] | None:
        """`acquire`, asking again while a live holder has it, until `timeout_s` (then LeaseHeld)."""
        deadline = time.monotonic() + timeout_s
        while True:
            try:
                return self.acquire()
            except LeaseHeld:
                if time.monotonic() > deadline:
                    raise
            time.sleep(random.uniform(0.01, 0.1))  # jittered: waiters do not ask in lockstep

    def renew(self) -> None:
        """Raises LeaseLost when another holder replaced the object."""
        if self.tag is None:
            raise LeaseLost(f"{self.path}: not held")
        try:
            self.tag = self.store.replace(self.path, self._payload(), self.tag)
        except Precondition:
            found = self.store.read(self.path)
            holder = _parse(found[0]) if found else {}
            if found and holder.get("token") == self.record["token"]:
                self.tag = found[1]  # our own replace, answered only on a retry of it
                return
            self.tag = None
            raise LeaseLost(f"lost the lease {self.path} " + (f"to {describe(holder)}" if found else "(deleted)")) from None

    def keep_renewed(self) -> None:
        """Renew from a daemon thread every ttl_s / 3 until `release`."""
        if self._thread is None:
            self._thread = threading.Thread(target=self._beat, daemon=True, name="evolve-lease")
            self._thread.start()

    def release(self) -> None:
        self._stop.set()
        if self._thread is not None and self._thread is not threading.current_thread():
            self._thread.join(timeout=10)
        self._thread = None
        tag, self.tag = self.tag, None
        if tag is not None:
            try:
                self.store.delete(self.path, tag)
            except Precondition:
                pass  # taken over meanwhile: the object is another holder's now

    def _beat(self) -> None:
        while not self._stop.wait(self.ttl_s / 3):
            try:
                self.renew()
            except LeaseLost as exc:
                log.error("%s", exc)
                if self.on_lost is not None:
                    self.on_lost(str(exc))
                return
            except Exception as exc:  # a flaky store: the next beat tries again; stale only after ttl_s
                log.warning("renewing the lease %s failed (%s); trying again", self.path, exc)

    def _payload(self) -> bytes:
        return json.dumps({**self.record, "renewed_at": self.clock()}).encode()


def _parse(data: bytes) -> dict[str, Any]:
    try:
        holder = json.loads(data)
    except ValueError:
        return {}
    return holder if isinstance(holder, dict) else {}


def pid_alive(pid: Any) -> bool:
    """Whether a process of this host is alive (True when that cannot be told)."""
    if not isinstance(pid, int) or pid <= 0:
        return True
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    return True
