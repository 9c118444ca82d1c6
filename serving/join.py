"""The shared feedback joiner: the Ray actor every replica records events in and joins feedback through.

The join's rules (what an event is, which feedback is accepted, the 404/409/410/422
answers, bounded memory) are `serving.event_join.EventJoin`, plain Python; this module
is its asyncio shell and the writes to the replay store.
"""

from __future__ import annotations

import asyncio
import logging
import secrets
import time
from collections import deque
from typing import Any

import ray

from core.hashing import stable_unit_hash
from core.schemas import SchemaError
from core.text_inputs import input_of_row
from serving.event_join import MAX_EVENT_ID_CHARS, Event, EventJoin, FeedbackRejected, to_columns
from serving.join_rules import split_shadow

log = logging.getLogger(__name__)

JOINER_NAME = "evolve-feedback-joiner"
__all__ = ["JOINER_NAME", "MAX_EVENT_ID_CHARS", "Event", "EventJoin", "FeedbackRejected", "Joiner",
           "get_or_create_joiner", "to_columns"]  # the join's rules stay importable from here


# ---- the shared joiner (plain asyncio class; its Ray shell below) -----------------------
class Joiner:
    """One EventJoin shared by every replica; writes joined rows through the replay writer.

    Rows are group-committed: a background task writes what accumulated while the
    previous write was in flight (one `add_and_wait` per table), retrying a failed
    write (row ids are deterministic, so the replay store drops duplicates).  A
    restarted joiner has forgotten its events: their feedback gets 404.

    With a `gate_name`, every `push_every` joined feedbacks the joiner hands that gate
    actor the predicting version's prequential window (the rollback guard) and each
    feedback's verdict on its version (the drift detector), as the feedback arrives, and
    how many distinct clients sent the window (the guard needs `gate.min_clients`).
    With `recent_fraction`, that share of labeled feedback (by a salted hash of the event id:
    the salt is the joiner's own secret, so a client cannot tell which of its feedback is held out)
    goes to the gate's recent slice instead of the replay store: no learner sees it;
    with `ope_fraction`, that share of all feedback goes to the gate's off-policy slice.
    Feedback on an event the gate's shadow answered too goes to the gate's shadow stage as
    well (the shadow's answer never reaches the replay store).
    """

    def __init__(self, writer: Any, feedback_ttl_s: float, feedback_table: str = "feedback",
                 text_table: str | None = "text", window: int = 300, max_events: int = 200_000,
                 commit_interval_s: float = 0.05, gate_name: str | None = None, policy_id: str | None = None,
                 push_every: int = 10, recent_fraction: float = 0.0, ope_fraction: float = 0.0,
                 max_client_share: float = 1.0, salt: str | None = None, max_pending: int = 20_000,
                 durable_timeout_s: float = 10.0):
        self.join = EventJoin(feedback_ttl_s, feedback_table=feedback_table, text_table=text_table,
                              window=window, max_events=max_events, max_client_share=max_client_share)
        self.salt = secrets.token_hex(16) if salt is None else salt
        self.writer, self.commit_interval_s = writer, commit_interval_s
        self.pending: dict[str, list[dict[str, Any]]] = {}
        # futures of the queued rows' commit, by table: feedback is acknowledged once its row is durable
        self._waiters: dict[str, list[asyncio.Future]] = {}
        self._durable: dict[str, asyncio.Future] = {}  # event id -> its row's commit, while pending
        self.max_pending, self.durable_timeout_s = max_pending, durable_timeout_s
        self.refused_full = 0
        self.written: dict[str, int] = {}
        self.write_errors, self.dropped = 0, 0
        self._writing = False
        self._task: asyncio.Task | None = None
        self._dirty: asyncio.Event | None = None
        self.gate_name, self.policy_id, self.push_every = gate_name, policy_id, push_every
        self._gate: Any = None
        self._unpushed: list[tuple[int, float]] = []  # (predicting version, 1/0 or reward) since the last push
        self.recent_fraction = recent_fraction if gate_name is not None else 0.0
        self._recent: list[tuple[str, int]] = []  # held-out labeled rows for the gate, since the last push
        self.ope_fraction = ope_fraction if gate_name is not None else 0.0
        self._offpolicy: list[dict[str, Any]] = []  # held-out rows for the gate's off-policy stage
        self._shadowed: list[dict[str, Any]] = []  # rows with a shadow's answer, for the gate's shadow stage
        self.held_for_gate = 0
        # (version, novelty, predicted label) of answered requests since the last push, for the
        # gate's input detectors; the newest only, if feedback (and so pushes) stalls
        self._inputs: deque[tuple[int, float | None, int]] = deque(maxlen=5000)

    async def record(self, events: list[dict[str, Any]]) -> int:
        self._queue(self.join.text_table, self.join.record(events))
        if self.gate_name is not None:
            self._inputs.extend((int(e["policy_version"]), e.get("novelty"), int(e["prediction"])) for e in events)
        return len(events)

    async def feedback(self, event_id: str, label: int | str | None = None, reward: float | None = None,
                       client: str | None = None) -> dict:
        """{"status": 200, "body": answer} once the feedback's row is in the replay store, or
        {"status": 4xx/503, "detail": reason} (never raises for a client error)."""
        if sum(map(len, self.pending.values())) >= self.max_pending:
            self.refused_full += 1  # the replay store is behind: refuse before accepting anything
            return {"status": 503, "detail": f"feedback queue full ({self.max_pending} rows waiting for the "
                                              "replay store); retry later", "retry_after_s": 1}
        try:
            answer, row = self.join.join(event_id, label, reward, client)
        except FeedbackRejected as exc:
            return {"status": exc.status, "detail": exc.detail}
        durable = self._durable.get(event_id)  # a repeat while the first one's row is still queued
        if row is not None:
            row, shadowed = split_shadow(row)
            if shadowed is not None and self.gate_name is not None:
                self._shadowed.append(shadowed)
            if row["label"] is not None and stable_unit_hash(f"{self.salt}{event_id}#recent") < self.recent_fraction:
                self._recent.append((input_of_row(row), int(row["label"])))  # the gate's, never the learner's
                self.held_for_gate += 1
            elif stable_unit_hash(f"{self.salt}{event_id}#ope") < self.ope_fraction:
                self._offpolicy.append({k: row[k] for k in ("text", "text_pair", "prediction", "propensity", "label",
                                                            "reward")})
                self.held_for_gate += 1
            else:
                durable = self._queue(self.join.feedback_table, [row])
                if durable is not None:
                    self._durable[event_id] = durable
                    durable.add_done_callback(lambda _, e=event_id: self._durable.pop(e, None))
            verdict = answer["correct"] if answer["correct"] is not None else row["reward"]
            self._push_window(answer["model_version"], float(verdict))
        if durable is not None:
            try:
                await asyncio.wait_for(asyncio.shield(durable), self.durable_timeout_s)
            except RuntimeError as exc:  # a bug, said as one: the feedback is not acknowledged
                return {"status": 500, "detail": f"feedback on {event_id!r} could not be stored: {exc}"}
            except asyncio.TimeoutError:
                return {"status": 503, "detail": f"feedback on {event_id!r} is taken but not yet in the replay "
                                                  "store; send the same feedback again to learn when it is",
                        "retry_after_s": 1}
        return {"status": 200, "body": answer}

    def _push_window(self, version: int, verdict: float) -> None:
        if self.gate_name is None:
            return
        self._unpushed.append((version, verdict))
        if len(self._unpushed) < self.push_every:
            return
        pairs, self._unpushed = self._unpushed, []
        recent, self._recent = self._recent, []
        offpolicy, self._offpolicy = self._offpolicy, []
        shadowed, self._shadowed = self._shadowed, []
        inputs = list(self._inputs)
        self._inputs.clear()
        try:
            if self._gate is None:
                self._gate = ray.get_actor(self.gate_name)
            self._gate.observe.remote(self.policy_id, pairs, self.join.stats.joined, recent, inputs)
            if offpolicy:
                self._gate.offpolicy.remote(self.policy_id, offpolicy)
            if shadowed:
                self._gate.shadow_rows.remote(self.policy_id, shadowed)
            window = self.join.prequential().get(version)  # None: nothing served greedily yet
            if window is not None:
                self._gate.check_window.remote(self.policy_id, version, *window, self.join.clients()[version])
        except Exception as exc:  # the gate is restarting or gone: the next push tries again
            self._gate = None
            log.warning("feedback joiner: cannot reach gate %r: %s", self.gate_name, exc)

    def prequential(self) -> dict[int, tuple[float, int]]:
        return self.join.prequential()

    def stats(self) -> dict[str, Any]:
        s = self.join.stats
        return {"events": s.events, "joined": s.joined, "repeats": s.repeats, "rejected": dict(s.rejected),
                "evicted_for_capacity": s.evicted_for_capacity, "held_events": len(self.join.events),
                "tombstones": len(self.join.tombs), "rows_written": dict(self.written),
                "rows_pending": sum(map(len, self.pending.values())), "write_errors": self.write_errors,
                "rows_dropped": self.dropped, "held_for_gate": self.held_for_gate, "refused_full": self.refused_full}

    async def flush(self, timeout_s: float = 30.0) -> bool:
        """Wait until every queued row is written (True) or `timeout_s` passes (False)."""
        deadline = time.monotonic() + timeout_s
        while (self.pending or self._writing) and time.monotonic() < deadline:
            await asyncio.sleep(0.01)
        return not (self.pending or self._writing)

    # ---- group commit ------------------------------------------------------------
    def _queue(self, table: str | None, rows: list[dict[str, Any]]) -> asyncio.Future | None:
        """Queue rows for the next group commit; the future resolves once they are written."""
        if table is None or not rows:
            return None
        if self.writer is None:  # serving without a replay store (benchmarks): count and drop
            self.dropped += len(rows)
            return None
        self.pending.setdefault(table, []).extend(rows)
        done = asyncio.get_running_loop().create_future()
        self._waiters.setdefault(table, []).append(done)
        if self._task is None or self._task.done():  # here: an async actor's __init__ runs outside its loop
            self._dirty = asyncio.Event()
            self._task = asyncio.get_running_loop().create_task(self._commit_loop())
        self._dirty.set()
        return done

    async def _commit_loop(self) -> None:
        while True:
            await self._dirty.wait()
            self._dirty.clear()
            await asyncio.sleep(self.commit_interval_s)  # let a group accumulate
            batch, self.pending = self.pending, {}
            waiters, self._waiters = self._waiters, {}
            self._writing = True
            try:
                for table, rows in batch.items():
                    written = await self._write(table, rows)
                    for done in waiters.pop(table, ()):
                        if not done.done():
                            done.set_result(True) if written else done.set_exception(
                                RuntimeError(f"rows for {table!r} refused by the replay store's schema"))
            finally:
                self._writing = False

    async def _write(self, table: str, rows: list[dict[str, Any]]) -> bool:
        backoff = 0.1
        while True:
            try:
                write = getattr(self.writer, "add_and_wait", None) or self.writer.add
                await asyncio.to_thread(write, table, to_columns(rows))  # blocks on the shard's ack
                self.written[table] = self.written.get(table, 0) + len(rows)
                return True
            except SchemaError as exc:  # a bug, not weather: retrying cannot help
                log.error("feedback joiner: %d rows for %r refused: %s", len(rows), table, exc)
                self.dropped += len(rows)
                return False
            except Exception as exc:  # shard restarting, ...: same ids again, duplicates are dropped
                self.write_errors += 1
                log.warning("feedback joiner: writing %d rows to %r failed (%s); retrying", len(rows), table, exc)
                await asyncio.sleep(backoff)
                backoff = min(backoff * 2, 5.0)


# every replica calls the same one; restarted when it dies (its events are then forgotten)
FeedbackJoiner = ray.remote(num_cpus=0, max_restarts=-1, max_task_retries=-1)(Joiner)


def get_or_create_joiner(writer: Any, feedback_ttl_s: float, feedback_table: str = "feedback",
                         text_table: str | None = "text", window: int = 300, name: str = JOINER_NAME,
                         gate_name: str | None = None, policy_id: str | None = None,
                         recent_fraction: float = 0.0, ope_fraction: float = 0.0,
                         max_client_share: float = 1.0) -> Any:
    # Ray warns about any ray.get in an async actor; the joiner's run in worker threads
    # (asyncio.to_thread in _write), never on the event loop, so the warning is noise here.
    quiet = {"env_vars": {"RAY_WARN_BLOCKING_GET_INSIDE_ASYNC": "0"}}
    return FeedbackJoiner.options(name=name, get_if_exists=True, runtime_env=quiet).remote(
        writer, feedback_ttl_s, feedback_table, text_table, window, gate_name=gate_name, policy_id=policy_id,
        recent_fraction=recent_fraction, ope_fraction=ope_fraction, max_client_share=max_client_share)
