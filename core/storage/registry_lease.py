"""Which runs are live on a registry: a lease file per run, renewed while it runs.

A run that serves a registry's policies holds a lease:

    <registry root>/_leases/<run>-<host>-<pid>.json   {"run", "run_dir", "host", "pid", "renewed_at", "ttl_s", ...}

renewed every `ttl_s / 3` seconds by a thread and removed when the run ends.
A lease counts as live until `ttl_s` after its last renewal (a run killed with
SIGKILL leaves its file behind; it goes stale on its own), and a lease of this
host whose process is gone is stale at once.

What it guards: an offline stage change (`evolve rollback --run-dir`) moves
the registry pointer while that run's replicas keep serving the version the
publisher holds.  `refuse_if_live` refuses it with one line naming the run;
the live path (the run's gate actor) moves the pointer and the replicas together.
"""

from __future__ import annotations

import json
import os
import socket
import threading
import time
from typing import Any


from core.storage.registry import RegistryError
from core.storage.paths import open_fs

LEASE_DIR = "_leases"  # not a policy name: policies() lists only directories with versions
DEFAULT_TTL_S = 30.0


class RegistryInUse(RegistryError):
    """An offline change was asked for while a run is live on the registry."""


class RegistryLease:
    """One run's lease on a registry; `with RegistryLease(...)` or `acquire()` / `release()`."""

    def __init__(self, uri: str, run: str, run_dir: str | None = None, ttl_s: float = DEFAULT_TTL_S,
                 clock=time.time):
        self.fs, self.root = open_fs(uri)
        self.ttl_s, self.clock = float(ttl_s), clock
        self.host, self.pid = socket.gethostname(), os.getpid()
        self.info = {"run": run, "run_dir": run_dir, "host": self.host, "pid": self.pid, "ttl_s": self.ttl_s}
        safe = "".join(c if c.isalnum() or c in "-_." else "_" for c in f"{run}-{self.host}-{self.pid}")
        self.path = f"{self.root}/{LEASE_DIR}/{safe}.json"
        self._stop = threading.Event()
        self._thread: threading.Thread | None = None

    def acquire(self, heartbeat: bool = True) -> "RegistryLease":
        self.info["acquired_at"] = self.clock()
        self.renew()
        if heartbeat and self._thread is None:
            self._thread = threading.Thread(target=self._beat, daemon=True, name="evolve-registry-lease")
            self._thread.start()
        return self

    def renew(self) -> None:
        self.fs.makedirs(f"{self.root}/{LEASE_DIR}", exist_ok=True)
        self.fs.pipe_file(self.path, json.dumps({**self.info, "renewed_at": self.clock()}).encode())

    def release(self) -> None:
        self._stop.set()
        if self._thread is not None:
            self._thread.join(timeout=5)
            self._thread = None
        try:
            self.fs.rm_file(self.path)
        except FileNotFoundError:
            pass

    def _beat(self) -> None:
        while not self._stop.wait(self.ttl_s / 3):
            try:
                self.renew()
            except OSError:
                pass  # a full or flaky disk: the next beat tries again; stale only after ttl_s

    def __enter__(self) -> "RegistryLease":
        return self.acquire()

    def __exit__(self, *exc: Any) -> None:
        self.release()


def live_runs(uri: str, now: float | None = None) -> list[dict[str, Any]]:
    """The leases on a registry that are not stale, oldest first."""
    fs, root = open_fs(uri)
    now = time.time() if now is None else now
    here = socket.gethostname()
    out = []
    try:
        paths = fs.ls(f"{root}/{LEASE_DIR}", detail=False)
    except FileNotFoundError:
        return []
    for path in paths:
        if not str(path).endswith(".json"):
            continue
        try:
            lease = json.loads(fs.cat_file(path))
            renewed, ttl = float(lease["renewed_at"]), float(lease.get("ttl_s", DEFAULT_TTL_S))
        except (FileNotFoundError, ValueError, KeyError, TypeError):
            continue  # released meanwhile, or half written by a crash: not a live run
        if now - renewed > ttl:
            continue
        if lease.get("host") == here and not _alive(lease.get("pid")):
            continue
        out.append(lease)
    return sorted(out, key=lambda lease: lease.get("acquired_at", 0))


def refuse_if_live(uri: str, what: str, now: float | None = None) -> None:
    """Raise RegistryInUse (one line, naming the run) when a run is live on the registry."""
    runs = live_runs(uri, now)
    if not runs:
        return
    run = runs[0]
    where = f"pid {run.get('pid')} on {run.get('host')}" + (f", run dir {run['run_dir']}" if run.get("run_dir") else "")
    raise RegistryInUse(f"refused: run {run.get('run')!r} ({where}) is live on this registry; {what} "
                        f"through it instead (--address auto), or stop it first")


def _alive(pid: Any) -> bool:
    if not isinstance(pid, int) or pid <= 0:
        return True  # cannot tell: trust the clock
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    return True
