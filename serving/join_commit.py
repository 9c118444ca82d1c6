"""Group commits of joined rows to the replay store, one queue per table (serving/join.py).

Rows queued while the previous write of their table is in flight go out together in the next
one (`add_and_wait`: it returns once every row is durable on its shard).  A commit is cut into
writes of at most the store's batch limit (`writer.batch_limit(table)`), so no write is one a
shard must refuse for its size.  Failures are told apart:

    refused      the store cannot take the rows as they are (a schema or size error: ValueError
                 or TypeError, also raised across Ray): retrying cannot help.  A write of several
                 rows is halved until the refused rows are found; only their waiters fail
                 (CommitFailed 500), the rest are written.
    unavailable  a shard restarting, a rate limiter's ReplayTimeout, a full disk: retried with
                 backoff until `give_up_s` after the write began, then its waiters fail
                 (CommitFailed 503), so the commits queued behind it are not held back for ever.

Row ids are deterministic, so a write retried after an unavailable store (which may have taken
the first one after all) is stored once: the shard drops the duplicate.

A queued row's future resolves True once it is stored, or with CommitFailed.  Rows queued
without one (a best-effort table: the text table, for continual MLM) are counted when they are
dropped, and `max_rows` bounds how many wait: beyond it, new rows are dropped and counted.
"""

from __future__ import annotations

import asyncio
import logging
import time
from typing import Any

from serving.event_join import to_columns

log = logging.getLogger(__name__)

MIN_ATTEMPT_S = 1.0  # a write begun at its deadline (the second half of a split) still gets one try
ACK_GRACE_S = 5.0  # past the writer's own timeout, before the joiner stops waiting for its thread


class CommitFailed(Exception):
    """A row the replay store did not take: the HTTP status for its waiter, and whether it may yet
    be stored (a write that gave up while the store was away may still land)."""

    def __init__(self, status: int, detail: str, maybe_stored: bool):
        super().__init__(detail)
        self.status, self.detail, self.maybe_stored = status, detail, maybe_stored


def cannot_heal(exc: BaseException) -> bool:
    """A refusal of the rows themselves (schema, size), not of the moment."""
    cause = getattr(exc, "cause", None)  # a Ray task error that could not take its cause's type
    return isinstance(exc, (ValueError, TypeError)) or isinstance(cause, (ValueError, TypeError))


def _reason(exc: BaseException) -> str:
    """One line: the shard's own error, not Ray's traceback around it."""
    exc = getattr(exc, "cause", None) or exc
    text = str(exc).strip().splitlines()
    return f"{type(exc).__name__}: {text[0][:300]}" if text else type(exc).__name__


class GroupCommit:
    def __init__(self, writer: Any, table: str, *, interval_s: float = 0.05, give_up_s: float = 10.0,
                 max_rows: int | None = None, paced: bool = True):
        self.writer, self.table = writer, table
        self.paced = paced  # False: the store's rate limiter does not hold these rows (a client's steps)
        self.interval_s, self.give_up_s, self.max_rows = interval_s, give_up_s, max_rows
        self.queue: list[tuple[dict[str, Any], asyncio.Future | None]] = []
        self._left: dict[asyncio.Future, int] = {}  # rows of each future not yet stored
        self.written = self.write_errors = self.dropped = self.refused = self.given_up = 0
        self.writing = False
        self._task: asyncio.Task | None = None
        self._dirty: asyncio.Event | None = None

    def idle(self) -> bool:
        return not self.queue and not self.writing

    def stats(self) -> dict[str, int]:
        return {"written": self.written, "pending": len(self.queue), "write_errors": self.write_errors,
                "dropped": self.dropped, "refused": self.refused, "given_up": self.given_up}

    def put(self, rows: list[dict[str, Any]], wait: bool = True) -> asyncio.Future | None:
        """Queue rows for the next commit; with `wait`, the future of their being stored."""
        if not rows:
            return None
        if self.writer is None:  # serving without a replay store (benchmarks): count and drop
            self.dropped += len(rows)
            return None
        if self.max_rows is not None:
            room = max(0, self.max_rows - len(self.queue))
            self.dropped += max(0, len(rows) - room)
            rows = rows[:room]
            if not rows:
                return None
        loop = asyncio.get_running_loop()
        done = loop.create_future() if wait else None
        if done is not None:
            self._left[done] = len(rows)
        self.queue.extend((row, done) for row in rows)
        if self._task is None or self._task.done():  # here: an async actor's __init__ runs outside its loop
            self._dirty = asyncio.Event()
            self._task = loop.create_task(self._loop())
        self._dirty.set()
        return done

    async def _loop(self) -> None:
        while True:
            await self._dirty.wait()
            self._dirty.clear()
            await asyncio.sleep(self.interval_s)  # let a group accumulate
            items, self.queue = self.queue, []
            if not items:
                continue
            self.writing = True
            try:
                limit = self._limit() or len(items)
                for start in range(0, len(items), limit):
                    chunk = items[start:start + limit]
                    try:
                        await self._commit(chunk, time.monotonic() + self.give_up_s)
                    except Exception as exc:  # a bug here must not strand the waiters
                        log.exception("feedback joiner: committing %d rows to %r", len(chunk), self.table)
                        self._fail(chunk, CommitFailed(500, f"the joiner failed to write it: {_reason(exc)}", True))
            finally:
                self.writing = False

    def _limit(self) -> int | None:
        limit = getattr(self.writer, "batch_limit", None)
        return limit(self.table) if limit is not None else None

    async def _commit(self, items: list[tuple[dict, asyncio.Future | None]], deadline: float) -> None:
        backoff = 0.1
        while True:
            try:
                await self._write([row for row, _ in items], max(deadline - time.monotonic(), MIN_ATTEMPT_S))
            except Exception as exc:
                if cannot_heal(exc):
                    if len(items) > 1:  # find the rows refused; the others are written
                        half = len(items) // 2
                        await self._commit(items[:half], deadline)
                        await self._commit(items[half:], deadline)
                        return
                    self.refused += 1
                    log.error("feedback joiner: the replay store refused a row for %r: %s", self.table, _reason(exc))
                    self._fail(items, CommitFailed(500, f"the replay store refused its row ({_reason(exc)})", False))
                    return
                self.write_errors += 1
                if time.monotonic() + backoff >= deadline:
                    self.given_up += 1
                    tried = f"tried for {time.monotonic() - deadline + self.give_up_s:.1f}s"
                    log.warning("feedback joiner: %d rows for %r not written (%s: %s); their events stay open",
                                len(items), self.table, tried, _reason(exc))
                    self._fail(items, CommitFailed(503, f"the replay store did not take its row ({tried}, "
                                                        f"commit timeout {self.give_up_s:g}s: {_reason(exc)})", True))
                    return
                log.warning("feedback joiner: writing %d rows to %r failed (%s); retrying", len(items), self.table,
                            _reason(exc))
                await asyncio.sleep(backoff)
                backoff = min(backoff * 2, 5.0)
                continue
            self.written += len(items)
            self._stored(items)
            return

    async def _write(self, rows: list[dict[str, Any]], timeout_s: float) -> None:
        add_and_wait = getattr(self.writer, "add_and_wait", None)
        if add_and_wait is None:
            call = asyncio.to_thread(self.writer.add, self.table, to_columns(rows))
        else:  # blocks on the shards' acks, bounded by timeout_s
            unpaced = {} if self.paced else {"paced": False}
            call = asyncio.to_thread(add_and_wait, self.table, to_columns(rows), timeout_s=timeout_s, **unpaced)
        try:
            await asyncio.wait_for(call, timeout_s + ACK_GRACE_S)
        except asyncio.TimeoutError:  # the thread may still finish: the same ids, stored once
            raise TimeoutError(f"no acknowledgement within {timeout_s + ACK_GRACE_S:g}s") from None

    def _stored(self, items: list[tuple[dict, asyncio.Future | None]]) -> None:
        for _, done in items:
            if done is None:
                continue
            left = self._left.get(done, 0) - 1
            if left > 0:
                self._left[done] = left
                continue
            self._left.pop(done, None)
            if not done.done():
                done.set_result(True)

    def _fail(self, items: list[tuple[dict, asyncio.Future | None]], exc: CommitFailed) -> None:
        for _, done in items:
            if done is None:
                self.dropped += 1  # best effort: nobody waits for it
            elif not done.done():
                self._left.pop(done, None)
                done.set_exception(exc)
