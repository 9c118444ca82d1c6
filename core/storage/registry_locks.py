"""What two registry writers must not do at once, in one process or across hosts.

    claim a version number    local: mkdir <policy>/vNNNNNN (atomic)
                              object store: create <policy>/vNNNNNN/claim.json if none is there
    change a stage            local: flock on <policy>/stages.lock
                              object store: a lease object <policy>/stages.lease (core.storage.object_lease)

On an object store both rest on conditional writes (S3 `If-None-Match` /
`If-Match`, core.storage.conditional_put), decided by the server: two publishers
racing for a number get different ones, and two stage changes never interleave.
A stage lock whose holder was killed expires after `STAGE_LOCK_TTL_S`.
"""

from __future__ import annotations

import contextlib
import json
import os
import socket
import threading
import time
from typing import Any, Callable, Iterator

from fsspec.implementations.local import LocalFileSystem

from core.storage.conditional_put import ConditionalStore, Precondition
from core.storage.object_lease import ObjectLease

CLAIM_FILE = "claim.json"
LOCK_FILE = "stages.lock"
STAGE_LEASE = "stages.lease"
STAGE_LOCK_TTL_S = 30.0  # a writer killed while holding the lock blocks the others this long at most
STAGE_LOCK_WAIT_S = 60.0  # a stage change waits this long for another to finish, then gives up
_THREAD_LOCKS: dict[str, threading.Lock] = {}
_THREAD_LOCKS_MU = threading.Lock()


def claim_version(fs: Any, pdir: str, vdir_of: Callable[[int], str]) -> tuple[int, str]:
    """The next free version number of the policy at `pdir`, claimed for this caller alone."""
    fs.makedirs(pdir, exist_ok=True)
    try:
        listed = fs.ls(pdir, detail=False)
    except FileNotFoundError:  # an object store has no empty directories: a new policy lists nothing
        listed = []
    names = [p.rstrip("/").rsplit("/", 1)[-1] for p in listed]
    version = max((int(n[1:]) for n in names if n.startswith("v") and n[1:].isdigit()), default=0) + 1
    local = isinstance(fs, LocalFileSystem)
    store = None if local else ConditionalStore(fs)
    claim = json.dumps({"pid": os.getpid(), "host": socket.gethostname(), "claimed_at": time.time()}).encode()
    while True:
        vdir = vdir_of(version)
        try:
            if local:
                os.mkdir(vdir)  # atomic: two publishers never get the same number
            else:
                store.create(f"{vdir}/{CLAIM_FILE}", claim)
            return version, vdir
        except (FileExistsError, Precondition):
            version += 1


@contextlib.contextmanager
def stage_lock(fs: Any, uri: str, pdir: str) -> Iterator[None]:
    """Held around a read-modify-write of stages.json: threads of this process, then other
    processes (an flock on a local or shared POSIX directory, a lease object on an object store).

    An flock is held per open file, so two threads each opening the lock file exclude each
    other too; the thread lock only keeps them from queueing in the kernel.  Never nested.
    Raises core.storage.object_lease.LeaseHeld when another holder keeps it past STAGE_LOCK_WAIT_S."""
    with _THREAD_LOCKS_MU:
        mu = _THREAD_LOCKS.setdefault(f"{uri}::{pdir}", threading.Lock())
    with mu:
        if isinstance(fs, LocalFileSystem):
            with _flock(pdir):
                yield
            return
        lease = ObjectLease(fs, f"{pdir}/{STAGE_LEASE}", {"what": "a stage change"}, ttl_s=STAGE_LOCK_TTL_S)
        lease.acquire_waiting(STAGE_LOCK_WAIT_S)
        try:
            yield
        finally:
            lease.release()


@contextlib.contextmanager
def _flock(pdir: str) -> Iterator[None]:
    import fcntl

    os.makedirs(pdir, exist_ok=True)
    fd = os.open(f"{pdir}/{LOCK_FILE}", os.O_RDWR | os.O_CREAT, 0o644)
    try:
        fcntl.flock(fd, fcntl.LOCK_EX)
        yield
    finally:
        os.close(fd)  # releases the flock
