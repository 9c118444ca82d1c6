"""How an actor ends on a bug so that Ray restarts it, and which HTTP answers a client retries.

A background thread that dies leaves a live process that does no work, which
Ray cannot see.  `CrashBackoff.fail(exc)` logs one line, sleeps a pause that
doubles with each consecutive crash (capped), and hard-exits the process
(`os._exit`, not `ray.actor.exit_actor`, which would tell Ray not to restart),
so `max_restarts=-1` brings the actor back.  The crash count must outlive the
process, so it lives in a small file named by the actor in a directory of
this user's alone (`private_state_dir`: 0o700, owned by us, not a link; a
shared temp dir's fixed name could be made, or linked elsewhere, by another
user first).  A crash more than `reset_after_s` after the last one counts as
the first again (the actor ran well in between).  Actors on other nodes keep
their own files, which is fine: a restart lands on a node of the same kind.
The traffic, rollout and /act traffic actors all end this way.
"""

from __future__ import annotations

import logging
import os
import re
import stat
import tempfile
import time
from typing import Any, Callable

RETRY_STATUS = frozenset({429, 502, 503, 504})  # busy, or a replica swapping or restarting: try again

log = logging.getLogger(__name__)


class CrashBackoff:
    """Log, wait a growing pause, exit the process: Ray's restart is the recovery."""

    def __init__(self, name: str, *, base_s: float = 1.0, cap_s: float = 30.0, reset_after_s: float = 300.0,
                 state_dir: str | None = None, sleep: Callable[[float], None] = time.sleep,
                 exit: Callable[[int], Any] = os._exit):
        safe = re.sub(r"[^A-Za-z0-9_.-]", "_", name)
        self.name, self.base_s, self.cap_s, self.reset_after_s = name, base_s, cap_s, reset_after_s
        directory = state_dir or private_state_dir()
        # no private directory: the count stays in memory, so each restart waits the first pause
        self.path = os.path.join(directory, f"evolve-crashes-{safe}") if directory else None
        self.sleep, self.exit = sleep, exit

    def delay_s(self, failures: int) -> float:
        return min(self.cap_s, self.base_s * 2 ** max(0, failures - 1))

    def failures(self) -> int:
        """Consecutive crashes so far: 0 without a recent one."""
        if self.path is None:
            return 0
        try:
            if time.time() - os.path.getmtime(self.path) > self.reset_after_s:
                return 0
            with open(self.path) as f:
                return int(f.read().strip() or 0)
        except (OSError, ValueError):
            return 0

    def fail(self, exc: BaseException) -> None:
        n = self.failures() + 1
        try:
            if self.path is not None:
                fd = os.open(self.path, os.O_WRONLY | os.O_CREAT | os.O_TRUNC | os.O_NOFOLLOW, 0o600)
                with open(fd, "w") as f:
                    f.write(str(n))
        except OSError:  # no writable state dir: still exit, with the shortest pause
            pass
        delay = self.delay_s(n)
        log.error("%s crashed (%d in a row), exiting for a restart in %.1fs: %s: %s",
                  self.name, n, delay, type(exc).__name__, " ".join(str(exc).split())[:300])
        self.sleep(delay)
        self.exit(1)


def private_state_dir() -> str | None:
    """$XDG_RUNTIME_DIR/evolve, else <temp dir>/evolve-<uid>, made 0o700 if missing; None (with a
    warning) when what is there is not a directory of this user's alone."""
    runtime = os.environ.get("XDG_RUNTIME_DIR")
    if runtime and os.path.isdir(runtime):
        path = os.path.join(runtime, "evolve")
    else:
        path = os.path.join(tempfile.gettempdir(), f"evolve-{os.getuid()}")
    try:
        os.mkdir(path, 0o700)
    except FileExistsError:
        pass
    except OSError as exc:
        log.warning("crash counts stay in memory: cannot make %s (%s)", path, exc)
        return None
    st = os.lstat(path)
    if not stat.S_ISDIR(st.st_mode) or st.st_uid != os.getuid() or st.st_mode & 0o077:
        log.warning("crash counts stay in memory: %s is not a directory of this user's alone "
                    "(a link, another owner, or open to others)", path)
        return None
    return path
