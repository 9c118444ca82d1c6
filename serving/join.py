"""The shared feedback joiner: the Ray actor every replica records events in and joins feedback through.

The join's rules (what an event is, which feedback is accepted, the 404/409/410/422
answers, bounded memory) are `serving.event_join.EventJoin`, plain Python; this module
is its asyncio shell and the writes to the replay store.
"""

from __future__ import annotations

import asyncio
import logging
import time
from collections import deque
from typing import Any, Callable

import ray

from serving.event_join import MAX_EVENT_ID_CHARS, SHADOW_FIELDS, Event, EventJoin, FeedbackRejected, to_columns
from serving.join_commit import CommitFailed, GroupCommit

log = logging.getLogger(__name__)

JOINER_NAME = "evolve-feedback-joiner"
__all__ = ["JOINER_NAME", "MAX_EVENT_ID_CHARS", "Event", "EventJoin", "FeedbackRejected", "Joiner",
           "get_or_create_joiner", "to_columns"]  # the join's rules stay importable from here


# ---- the shared joiner (plain asyncio class; its Ray shell below) -----------------------
class Joiner:
    """One EventJoin shared by every replica; writes joined rows through the replay writer.

    Rows are group-committed per table (serving/join_commit.py): a feedback is answered 200
    only once its row is durable in the replay store.  Until then its event is spoken for
    (a repeat waits for the same row; a different feedback is a 409); when the write fails
    (the store refused the row, or did not take it within `commit_timeout_s`) the waiters get
    the reason (500 / 503) and the event is open again, so the client's retry is written.
    Text-table rows are best effort (continual MLM): at most `max_text_pending` wait, the rest
    are dropped and counted.  A restarted joiner has forgotten its events: their feedback gets 404.

    With a `gate_name`, every `push_every` kept feedbacks the joiner hands that gate actor
    the evidence since the last push in one call (`evidence`): each kept feedback's joined row
    (a shadow's answer included) with its sender and the slice it was held out for, and the
    requests answered meanwhile.  What to hold out is the gate's rule, `slices` (gate/slices.py,
    called and never imported: `slices(event_id, labeled) -> "recent" | "ope" | None`): a
    feedback it holds out goes to the gate alone, never to the replay store, so no learner sees
    it.  The joiner keeps no gate state: the gate judges.
    """

    def __init__(self, writer: Any, feedback_ttl_s: float, feedback_table: str = "feedback",
                 text_table: str | None = "text", max_events: int = 200_000,
                 commit_interval_s: float = 0.05, gate_name: str | None = None, policy_id: str | None = None,
                 push_every: int = 10, slices: Callable[[str, bool], str | None] | None = None,
                 max_pending: int = 20_000, durable_timeout_s: float = 10.0, commit_timeout_s: float | None = None,
                 max_text_pending: int = 20_000, max_open_per_client: int | None = None):
        self.join = EventJoin(feedback_ttl_s, feedback_table=feedback_table, text_table=text_table,
                              max_events=max_events, max_open_per_client=max_open_per_client)
        self.writer = writer
        give_up = durable_timeout_s if commit_timeout_s is None else commit_timeout_s
        self.commits = {feedback_table: GroupCommit(writer, feedback_table, interval_s=commit_interval_s,
                                                    give_up_s=give_up)}
        if text_table is not None:
            self.commits[text_table] = GroupCommit(writer, text_table, interval_s=commit_interval_s,
                                                   give_up_s=give_up, max_rows=max_text_pending)
        self._durable: dict[str, asyncio.Future] = {}  # event id -> its row's commit, while in flight
        self.max_pending, self.durable_timeout_s = max_pending, durable_timeout_s
        self.refused_full = 0
        self.gate_name, self.policy_id, self.push_every = gate_name, policy_id, push_every
        self.slices = slices if gate_name is not None else None
        self._gate: Any = None
        self._kept: list[dict[str, Any]] = []  # feedback evidence for the gate since the last push
        self.held_for_gate = 0
        # (version, novelty, predicted label) of answered requests since the last push, for the
        # gate's input detectors; the newest only, if feedback (and so pushes) stalls
        self._answered: deque[tuple[int, float | None, int]] = deque(maxlen=5000)

    async def record(self, events: list[dict[str, Any]], client: str | None = None) -> int:
        """Remember served events (`client`: who asked, for events that do not say)."""
        rows = self.join.record(events, client)
        self._store_defaulted()
        if self.join.text_table is not None:
            self.commits[self.join.text_table].put(rows, wait=False)
        if self.gate_name is not None:  # a classifier's answers (a decision's or completion's event is an object)
            self._answered.extend((int(e["policy_version"]), e.get("novelty"), int(e["prediction"]))
                                  for e in events if isinstance(e, dict))
        return len(events)

    async def feedback(self, event_id: str, label: int | str | None = None, reward: float | None = None,
                       client: str | None = None, better_than: str | None = None) -> dict:
        """{"status": 200, "body": answer} once the feedback's row is in the replay store, or
        {"status": 4xx/5xx, "detail": reason} (never raises for a client error).
        `better_than`: a completion preferred over another of its prompt (serving/completion_join.py)."""
        if len(self.commits[self.join.feedback_table].queue) >= self.max_pending:
            self.refused_full += 1  # the replay store is behind: refuse before accepting anything
            return {"status": 503, "detail": f"feedback queue full ({self.max_pending} rows waiting for the "
                                              "replay store); retry later", "retry_after_s": 1}
        try:
            answer, row = self.join.take(event_id, label, reward, client, better_than)
        except FeedbackRejected as exc:
            return {"status": exc.status, "detail": exc.detail}
        finally:
            self._store_defaulted()
        # a repeat while the first one's row is in flight waits for the same row
        durable = self._store(event_id, row) if row is not None else self._durable.get(event_id)
        if durable is not None:
            try:
                await asyncio.wait_for(asyncio.shield(durable), self.durable_timeout_s)
            except CommitFailed as exc:
                return {"status": exc.status, "retry_after_s": 1 if exc.status == 503 else None,
                        "detail": f"feedback on {event_id!r} is not stored: {exc.detail}; the event is open: "
                                  "send the feedback again"}
            except asyncio.TimeoutError:
                return {"status": 503, "detail": f"feedback on {event_id!r} is taken but not yet in the replay "
                                                  "store; send the same feedback again to learn when it is",
                        "retry_after_s": 1}
        return {"status": 200, "body": answer}

    def _store(self, event_id: str, row: dict[str, Any]) -> asyncio.Future | None:
        """Send a taken feedback's row on its way: the future of its commit, or None when it needs none
        (the gate's rule held it out of training)."""
        held = self.slices(event_id, row.get("label") is not None) if self.slices is not None else None
        if held is not None:
            self.held_for_gate += 1
        else:
            replay = {k: v for k, v in row.items() if k not in SHADOW_FIELDS}  # a shadow's answer is the gate's
            durable = self.commits[self.join.feedback_table].put([replay])
            if durable is not None:
                self._durable[event_id] = durable
                durable.add_done_callback(lambda f: self._committed(event_id, row, f))
                return durable
        self._counted(event_id, row, held)
        return None

    def _store_defaulted(self) -> None:
        """Rows of decisions whose reward window closed without one (their default reward, in
        serving/decision_join.py): stored by the next commit; no client waits on them.  They are
        swept at each record, feedback and flush, so a policy with no traffic stores them late."""
        rows = self.join.take_defaulted()
        if rows:
            done = self.commits[self.join.feedback_table].put(rows)
            if done is not None:
                done.add_done_callback(lambda f: f.cancelled() or f.exception() is None
                                       or log.warning("joiner: %d default rewards not stored: %s", len(rows),
                                                      f.exception()))

    def _committed(self, event_id: str, row: dict, done: asyncio.Future) -> None:
        self._durable.pop(event_id, None)
        failed = done.exception() if not done.cancelled() else CommitFailed(503, "cancelled", True)
        if failed is None:
            self._counted(event_id, row, None)
        else:  # not stored: the event is open for the client's retry
            self.join.reopen(event_id, maybe_stored=getattr(failed, "maybe_stored", True))

    def _counted(self, event_id: str, row: dict, held: str | None) -> None:
        """The feedback is kept (stored, or held for the gate): it counts, and is the gate's evidence."""
        taken = self.join.settle(event_id)
        if self.gate_name is None:
            return
        self._kept.append({"type": "feedback", "row": row, "client": taken.client if taken else None, "slice": held})
        if len(self._kept) >= self.push_every:
            self._push()

    def _push(self) -> None:
        items = self._kept + [{"type": "answered", "version": v, "novelty": n, "prediction": p}
                              for v, n, p in self._answered]
        self._kept = []
        self._answered.clear()
        try:
            if self._gate is None:
                self._gate = ray.get_actor(self.gate_name)
            self._gate.evidence.remote(self.policy_id, items)
        except Exception as exc:  # the gate is restarting or gone: the next push tries again
            self._gate = None
            log.warning("feedback joiner: cannot reach gate %r: %s", self.gate_name, exc)

    def open_events(self, client: str | None) -> int:
        """How many of `client`'s predicted events wait for feedback (at most max_open_per_client)."""
        return len(self.join.open.get(client, ()))

    def stats(self) -> dict[str, Any]:
        s = self.join.stats
        commits = {t: c.stats() for t, c in self.commits.items()}
        text = commits.get(self.join.text_table, {})
        return {"events": s.events, "joined": s.joined, "repeats": s.repeats, "rejected": dict(s.rejected),
                "evicted_for_capacity": s.evicted_for_capacity, "evicted_for_sender": s.evicted_for_sender,
                "reopened": s.reopened, "defaulted": s.defaulted, "held_events": len(self.join.events),
                "tombstones": len(self.join.tombs),
                "rows_written": {t: c["written"] for t, c in commits.items() if c["written"]},
                "rows_pending": sum(c["pending"] for c in commits.values()),
                "write_errors": sum(c["write_errors"] for c in commits.values()),
                "rows_dropped": sum(c["dropped"] for c in commits.values()),
                "text_rows_dropped": text.get("dropped", 0),
                "rows_refused": sum(c["refused"] for c in commits.values()),
                "commits_given_up": sum(c["given_up"] for c in commits.values()),
                "held_for_gate": self.held_for_gate, "refused_full": self.refused_full}

    async def flush(self, timeout_s: float = 30.0) -> bool:
        """Wait until every queued row is written (True) or `timeout_s` passes (False); the gate gets
        the evidence it has not seen yet."""
        deadline = time.monotonic() + timeout_s
        self._store_defaulted()
        while not self._idle() and time.monotonic() < deadline:
            await asyncio.sleep(0.01)
        if self._kept:
            self._push()
        return self._idle()

    def _idle(self) -> bool:
        return all(c.idle() for c in self.commits.values())


# every replica calls the same one; restarted when it dies (its events are then forgotten)
FeedbackJoiner = ray.remote(num_cpus=0, max_restarts=-1, max_task_retries=-1)(Joiner)


def get_or_create_joiner(writer: Any, feedback_ttl_s: float, feedback_table: str = "feedback",
                         text_table: str | None = "text", name: str = JOINER_NAME,
                         gate_name: str | None = None, policy_id: str | None = None,
                         slices: Callable[[str, bool], str | None] | None = None,
                         max_events: int = 200_000) -> Any:
    # Ray warns about any ray.get in an async actor; the joiner's run in worker threads
    # (asyncio.to_thread in _write), never on the event loop, so the warning is noise here.
    quiet = {"env_vars": {"RAY_WARN_BLOCKING_GET_INSIDE_ASYNC": "0"}}
    return FeedbackJoiner.options(name=name, get_if_exists=True, runtime_env=quiet).remote(
        writer, feedback_ttl_s, feedback_table, text_table, gate_name=gate_name, policy_id=policy_id, slices=slices,
        max_events=max_events)
