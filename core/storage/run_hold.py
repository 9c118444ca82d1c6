"""One run per storage: a run holds its run directory and its storage for its whole life.

    <run dir>/run.lock            flock'd while the run lives; the holder's record inside
    <run.storage URL>/run.lease   a lease object (core.storage.object_lease), renewed while the run lives

A second run on a held place is refused (`StorageHeld`, one line naming the
holder: run, id, pid, host, start time): it would write the same segments,
events and versions.  The flock is the kernel's, so a run that crashes or is
killed frees it at once; the next run finds the dead holder's record still in
the file and says it takes over.  An object store has no process to watch: its
lease expires `ttl_s` after the last renewal, or at once when the holder ran on
this host and is gone.  A run whose lease is taken over (it could not renew for
`ttl_s`) is told through `on_lost`.

The places held are the run directory, `run.storage` and `replay.dir` where
set; a registry named by `registry.uri` alone may be shared between runs (its
version numbers are claimed atomically).
"""

from __future__ import annotations

import errno
import json
import os
import socket
import time
import uuid
from pathlib import Path
from typing import Any, Callable

from core.storage.object_lease import DEFAULT_TTL_S, LeaseHeld, ObjectLease, describe
from core.storage.paths import absolute, is_url, open_fs

HOLD_FILE = "run.lock"
LEASE_OBJECT = "run.lease"


class StorageHeld(RuntimeError):
    """A live run holds a place this run would write; the message is one line naming it."""


class StorageUnreachable(RuntimeError):
    """The store of a place to hold did not answer; the message is one line saying which."""


def hold_places(run_dir: str | os.PathLike[str], storage: str | None, replay_dir: str | None) -> list[str]:
    """The places one run must hold alone, absolute, each once, none inside another."""
    places: list[str] = []
    for uri in (run_dir, storage, replay_dir):
        if not uri:
            continue
        place = absolute(uri).rstrip("/")
        if not any(place == p or place.startswith(p + "/") for p in places):
            places.append(place)
    return places


class RunHold:
    """`acquire()` every place or none; `release()` at the end of the run (or `with RunHold(...)`)."""

    def __init__(self, places: list[str], run: str, ttl_s: float = DEFAULT_TTL_S,
                 clock: Callable[[], float] = time.time):
        self.places, self.ttl_s, self.clock = list(places), ttl_s, clock
        self.holder = {"run": run, "run_id": uuid.uuid4().hex[:12], "pid": os.getpid(),
                       "host": socket.gethostname(), "started_at": clock()}
        self.on_lost: Callable[[str], None] | None = None  # a lease taken over while the run goes
        self._held: list[_FileHold | ObjectLease] = []

    def acquire(self) -> list[str]:
        """Hold every place; returns one line per stale hold taken over or place that cannot be
        locked.  Raises StorageHeld (holding nothing) when a live run holds any of them."""
        lines: list[str] = []
        try:
            for place in self.places:
                lines += self._take(place)
        except BaseException:
            self.release()
            raise
        return lines

    def _take(self, place: str) -> list[str]:
        what = f"storage {place}" if is_url(place) else f"run directory {place}"
        if is_url(place):
            fs, root = open_fs(place)
            hold: _FileHold | ObjectLease = ObjectLease(fs, f"{root}/{LEASE_OBJECT}", self.holder, self.ttl_s,
                                                        self.clock)
            hold.on_lost = self._lost
            try:
                fs.makedirs(root, exist_ok=True)  # as the registry would: a new bucket is made
                previous = hold.acquire()
            except LeaseHeld as exc:
                raise StorageHeld(_refusal(what, exc.holder)) from None
            except Exception as exc:  # OSError, botocore's connection errors: the store did not answer
                raise StorageUnreachable(f"cannot hold {what}: {' '.join(str(exc).split())[:300]}") from None
            hold.keep_renewed()
            self._held.append(hold)
            lines = [] if hold.store.atomic else [
                f"{what}: this store has no conditional writes Evolve knows: a second run there is refused "
                "on a best-effort basis only"]
        else:
            hold = _FileHold(Path(place), self.holder)
            previous, lines = hold.acquire(what)
            self._held.append(hold)
        if previous:
            why = previous.get("stale_because", "its process is no longer running")
            lines.append(f"{what} was held by {describe(previous)}, but {why}: taken over")
        return lines

    def release(self) -> None:
        held, self._held = self._held, []
        for hold in reversed(held):
            hold.release()

    def _lost(self, why: str) -> None:
        if self.on_lost is not None:
            self.on_lost(why)

    def __enter__(self) -> "RunHold":
        self.acquire()
        return self

    def __exit__(self, *exc: Any) -> None:
        self.release()


class _FileHold:
    """An flock on <dir>/run.lock, held by this process until `release` or its exit."""

    def __init__(self, directory: Path, holder: dict[str, Any]):
        self.path, self.holder, self.fd = directory / HOLD_FILE, holder, None

    def acquire(self, what: str) -> tuple[dict[str, Any] | None, list[str]]:
        import fcntl

        self.path.parent.mkdir(mode=0o700, parents=True, exist_ok=True)
        fd = os.open(self.path, os.O_RDWR | os.O_CREAT | os.O_NOFOLLOW | os.O_CLOEXEC, 0o600)
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            holder = _read_record(fd)
            os.close(fd)
            raise StorageHeld(_refusal(what, holder)) from None
        except OSError as exc:
            if exc.errno not in (errno.ENOLCK, errno.EOPNOTSUPP, errno.ENOSYS):
                os.close(fd)
                raise
            self.fd = fd  # kept open: its record still names this run for a reader
            return None, [f"{what}: cannot be locked here ({exc.strerror}): a second run on it would not "
                          "be refused"]
        previous = _read_record(fd) or None  # left by a holder that never released: it is dead
        record = json.dumps(self.holder).encode()
        os.ftruncate(fd, 0)
        os.pwrite(fd, record, 0)
        self.fd = fd
        return previous, []

    def release(self) -> None:
        fd, self.fd = self.fd, None
        if fd is None:
            return
        try:
            os.ftruncate(fd, 0)  # an empty file: released cleanly, nothing to take over
        except OSError:
            pass
        os.close(fd)  # frees the flock


def _read_record(fd: int) -> dict[str, Any]:
    try:
        data = os.pread(fd, 4096, 0)
        record = json.loads(data) if data.strip() else {}
    except (OSError, ValueError):
        return {}
    return record if isinstance(record, dict) else {}


def _refusal(what: str, holder: dict[str, Any]) -> str:
    return (f"{what} is held by {describe(holder)}, which is still running; stop it first (Ctrl-C or "
            "SIGTERM; `evolve stop` for a submitted job), or give this run another --run-dir / run.storage")

