"""The run's keys kept in one place, followed by every replica on every node.

`KeyBook` is the one copy: the key store's JSON as the run's driver node reads it (the keys
file, or `keys_env`'s JSON when that is set), and a version that grows whenever that text
changes. Asked for news (`since`), it re-reads its source at most every `refresh_s`; a source
that cannot be read or parsed keeps the last good keys and says why (`error`).

`FollowedKeys` is a replica's side: what an `Authenticator` reads (`version`, `records`),
filled from the book by `poll`, every `every_s` in a daemon thread. Until it first hears
from the book it knows the snapshot the driver handed out; while the book cannot be
reached it keeps what it heard last. A revoke on the driver's node thus reaches every
replica within about `refresh_s + every_s`, on every node, whatever their disks hold.
"""

from __future__ import annotations

import logging
import threading
import time
from typing import Callable

from core.auth.keys import KeyRecord, parse_records

log = logging.getLogger(__name__)

# (version, the key store's JSON), or None while the replica's version is the newest
News = tuple[int, str] | None


class KeyBook:
    def __init__(self, read: Callable[[], str], refresh_s: float = 1.0, clock: Callable[[], float] = time.monotonic,
                 first_version: int = 1):
        """`first_version`: where this book's versions start; a restarted book starts beyond
        its predecessor's (a clock reading), so no replica mistakes its keys for the newest."""
        self.read, self.refresh_s, self.clock = read, refresh_s, clock
        self.version, self.text, self.error = first_version - 1, None, None
        self._read_at = clock()
        self.refresh()

    def refresh(self) -> None:
        """Read the source once; a new text that parses is the next version."""
        self._read_at = self.clock()
        try:
            text = self.read()
            parse_records(text, where="the run's key source")
        except (OSError, ValueError) as exc:
            if str(exc) != self.error:
                log.warning("key book: keeping version %d: %s", self.version, exc)
            self.error = str(exc)
            return
        self.error = None
        if text != self.text:
            self.version, self.text = self.version + 1, text

    def since(self, version: int) -> News:
        """The keys when `version` is not the newest, else None (re-read first when due)."""
        if self.clock() - self._read_at >= self.refresh_s:
            self.refresh()
        if self.text is None:  # never read: the replicas keep the driver's snapshot
            return None
        return None if version == self.version else (self.version, self.text)

    def status(self) -> dict:
        return {"version": self.version, "error": self.error}


class FollowedKeys:
    """A replica's keys, as the book last said (plus the run's own keys, `extra`)."""

    def __init__(self, fetch: Callable[[int], News], snapshot: str, extra: list[dict] | None = None,
                 every_s: float = 1.0):
        self.fetch, self.every_s = fetch, every_s
        self.extra = [KeyRecord.model_validate(r) for r in extra or ()]
        # one tuple, swapped whole: a reader never pairs one version with another's records
        self._state: tuple[int, dict[str, KeyRecord]] = (0, parse_records(snapshot, self.extra, "the key snapshot"))
        self.error: str | None = None
        self._stop = threading.Event()
        self._thread: threading.Thread | None = None

    def version(self) -> tuple:
        return ("book", self._state[0])

    def records(self) -> dict[str, KeyRecord]:
        return self._state[1]

    def poll(self) -> bool:
        """Ask the book once; True when the keys changed."""
        version = self._state[0]
        news = self.fetch(version)
        if news is None:
            return False
        new_version, text = news
        self._state = (new_version, parse_records(text, self.extra, "the run's key book"))
        return True

    def start(self) -> "FollowedKeys":
        """Ask once now (a replica started after a revoke never takes the revoked key), then
        every `every_s` in the background."""
        self._poll_quietly()
        self._thread = threading.Thread(target=self._follow, name="key-follower", daemon=True)
        self._thread.start()
        return self

    def close(self) -> None:
        self._stop.set()

    def _follow(self) -> None:
        while not self._stop.wait(self.every_s):
            self._poll_quietly()

    def _poll_quietly(self) -> None:
        try:
            self.poll()
            self.error = None
        except Exception as exc:  # the book restarting or unreachable: keep the keys heard last
            if str(exc) != self.error:
                log.warning("key follower: keeping version %d: %s", self._state[0], exc)
            self.error = str(exc)
