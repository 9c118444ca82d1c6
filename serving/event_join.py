"""The feedback join's rules as plain Python: inference events meet their feedback, once, in time.

A replica records an event for every text it classifies (`event_id` -> text,
and the second text of a pair (`text_pair`, None for one text), prediction, probabilities, label names, policy version).  A client's feedback
names the event and gives the true label, or a reward in [0, 1], or both; the
join checks it against the event and produces one row for the replay
`feedback` table.  The request texts also go to the `text` table (continual MLM),
both texts of a pair as rows of their own.

`EventJoin` has one injectable clock and no Ray, so the rules are unit-tested;
`serving.join.Joiner` is the actor every replica shares around it, because a
feedback request may reach a different replica than its prediction did.

Answers (HTTP status in `FeedbackRejected.status`):
  404 unknown event id;  410 feedback after `feedback_ttl_s`, or the event was
  evicted for capacity;  422 label outside the event's label set, reward
  outside [0, 1];  409 a different feedback for an event that already has one.
  A repeat of the same feedback gets the same answer and writes nothing.

A feedback is taken in two steps, because its row must be stored before it counts:
`take` checks it and returns the row (the event is then spoken for: a repeat waits for
the same row, a different feedback is a 409), then `settle` once the row is stored
(it counts: joined; the joiner hands it to the gate) or `reopen` when the write failed (the
event is open again, so the client's retry is written, not answered as a repeat).
`join` is both at once, for feedback that needs no write.

An event whose kind has a `default_feedback` (a decision's default reward, serving/decision_join.py)
and whose window closes without feedback leaves its row with that feedback in `defaulted`, for the
joiner to store; a late feedback then hears 410 naming the default.

Memory stays bounded: events leave after `feedback_ttl_s` (or when more than
`max_events` are held), and leave behind a small tombstone (no text) for
`tombstone_s` more, so a late client hears 410 "expired" rather than 404.
Each sender (`Event.client`: the predict's API key id, else its client header;
None, anonymous, is one sender) holds at most `max_open_per_client` events still
waiting for feedback: a flood of predicts from one sender evicts its own oldest
open events, never another sender's.
"""

from __future__ import annotations

import time
from collections import OrderedDict
from dataclasses import dataclass, field
from datetime import datetime, timezone
from typing import Any, Callable, Iterable, Mapping, Sequence

from serving.join_rules import FeedbackRejected, check_reward, describe

MAX_EVENT_ID_CHARS = 128
SHADOW_FIELDS = ("shadow_version", "shadow_prediction")  # the gate's evidence only: no replay column holds them


@dataclass
class Event:
    event_id: str
    text: str
    prediction: int
    probs: list[float]
    labels: list[str]
    policy_id: str
    policy_version: int
    actor_id: str  # the replica that served it
    novelty: float | None = None  # 0..100 percentile, when a novelty version scored it
    propensity: float | None = None  # the probability `prediction` was served with (core/stats/exploration.py)
    action_probs: list[float] | None = None  # the serving distribution it was drawn from
    shadow_version: int | None = None  # the gate's shadow version, when it answered this text too
    shadow_prediction: int | None = None  # its greedy answer (the client got `prediction`)
    text_pair: str | None = None  # the second text of a pair input; None: one text
    created: float = 0.0  # set by the join's clock
    client: str | None = None  # who asked for the prediction: its open events are capped
    feedback: tuple[int | None, float | None] | None = None  # what was accepted (label, reward)
    answer: dict[str, Any] | None = None  # the answer given to it (repeated verbatim)
    # a feedback whose write gave up while the store might still take it: only it may be sent again
    uncertain: tuple[int | None, float | None] | None = None

    # ---- what the join asks of an event (a completion's: serving/completion_join.py) ---------
    @staticmethod
    def feedback_key(label: int | None, reward: float | None, better_than: str | None) -> tuple:
        if better_than is not None:
            raise FeedbackRejected(422, "'better_than' is feedback on a completion; a prediction takes a "
                                        "label or a reward")
        if label is None and reward is None:
            raise FeedbackRejected(422, "feedback needs a label or a reward")
        return label, check_reward(reward)

    @staticmethod
    def describe(key: tuple) -> str:
        return describe(key)

    def feedback_answer(self, key: tuple) -> dict[str, Any]:
        correct = None if key[0] is None else key[0] == self.prediction
        return {"event_id": self.event_id, "accepted": True, "model_version": self.policy_version, "correct": correct}

    def feedback_row(self, key: tuple, peer: Any = None) -> dict[str, Any]:
        row = {"event_id": self.event_id, "text": self.text, "text_pair": self.text_pair,
               "prediction": self.prediction, "probs": list(self.probs), "label": key[0], "reward": key[1],
               "propensity": self.propensity,
               "action_probs": None if self.action_probs is None else list(self.action_probs)}
        if self.shadow_prediction is not None:  # the gate's evidence, split off before the replay store (join.py)
            row.update(shadow_version=self.shadow_version, shadow_prediction=self.shadow_prediction)
        return row

    def release(self) -> None:
        """Its feedback row is stored: the texts go, the event answers repeats."""
        self.text, self.text_pair = "", None

    def text_rows(self) -> list[str]:
        return [self.text] + ([] if self.text_pair is None else [self.text_pair])


@dataclass
class InFlight:
    """A taken feedback whose row is not yet stored: what it is, and who sent it."""

    key: tuple[int | None, float | None]
    version: int
    client: str | None


@dataclass
class Tombstone:
    gone_at: float
    reason: str | None  # why it is gone, said in the 410; None: its feedback window closed
    feedback: tuple[int | None, float | None] | None  # kept so a late repeat still gets its answer
    answer: dict[str, Any] | None
    labels: list[str]
    created: float
    kind: type = Event  # the event's class: what its feedback means


@dataclass
class JoinStats:
    events: int = 0
    joined: int = 0
    repeats: int = 0
    rejected: dict[int, int] = field(default_factory=dict)
    evicted_for_capacity: int = 0
    evicted_for_sender: int = 0  # a sender over its open-event cap lost its oldest
    reopened: int = 0  # taken feedback whose write failed: the event is open again
    defaulted: int = 0  # windows that closed without feedback, stored with the kind's default


class EventJoin:
    def __init__(self, feedback_ttl_s: float, *, feedback_table: str = "feedback", text_table: str | None = "text",
                 max_events: int = 200_000, tombstone_s: float | None = None, max_tombstones: int | None = None,
                 clock: Callable[[], float] = time.time, max_open_per_client: int | None = None):
        if feedback_ttl_s <= 0 or max_events < 1:
            raise ValueError("feedback_ttl_s and max_events must be positive")
        self.ttl, self.max_events = feedback_ttl_s, max_events
        # below max_events, so one sender alone never pushes the others' events out by capacity
        self.max_open_per_client = max_open_per_client or max(1, max_events // 4)
        self.tombstone_s = feedback_ttl_s if tombstone_s is None else tombstone_s
        self.max_tombstones = max_events if max_tombstones is None else max_tombstones
        self.feedback_table, self.text_table, self.clock = feedback_table, text_table, clock
        self.events: OrderedDict[str, Event] = OrderedDict()  # insertion (= time) order: evict from the front
        self.tombs: OrderedDict[str, Tombstone] = OrderedDict()
        self.open: dict[str | None, OrderedDict[str, None]] = {}  # sender -> its events without feedback
        self.inflight: dict[str, InFlight] = {}  # taken feedback whose row is not yet stored
        self.defaulted: list[dict[str, Any]] = []  # rows of closed windows' default feedback, to store
        self.stats = JoinStats()

    # ---- events ------------------------------------------------------------------
    def record(self, events: Iterable[Event | Mapping[str, Any]], client: str | None = None) -> list[dict[str, Any]]:
        """Remember served events; returns their rows for the text table (empty when it is off).

        `client`: the sender of events that do not name their own."""
        now = self.clock()
        self._evict(now)
        rows = []
        for ev in events:
            ev = Event(**ev) if isinstance(ev, Mapping) else ev  # an Event, or a completion's (completion_join.py)
            if ev.event_id in self.events or ev.event_id in self.tombs:
                continue  # a retried record call (Ray retries are at-least-once)
            ev.created = now
            ev.client = client if ev.client is None else ev.client
            self.events[ev.event_id] = ev
            self._open(ev, now)
            self.stats.events += 1
            if self.text_table is not None:
                for k, text in enumerate(ev.text_rows()):  # a pair's second text is a row of its own
                    rows.append(self._common(f"text-{ev.event_id}" + ("-pair" if k else ""), self.text_table, ev, now)
                                | {"text": text})
        while len(self.events) > self.max_events:  # a burst beyond capacity: the oldest go first
            event_id, ev = self.events.popitem(last=False)
            self._close(event_id, ev)
            self.stats.evicted_for_capacity += 1
            self._bury(event_id, ev, now, f"evicted before its feedback arrived: the server holds at most "
                                          f"{self.max_events} events")
        return rows

    def join(self, event_id: str, label: int | str | None = None, reward: float | None = None,
             client: str | None = None, better_than: str | None = None) -> tuple[dict[str, Any], dict[str, Any] | None]:
        """`take` and `settle` at once: for feedback whose row needs no write (held out for the gate)."""
        answer, row = self.take(event_id, label, reward, client, better_than)
        if row is not None:
            self.settle(event_id)
        return answer, row

    def take(self, event_id: str, label: int | str | None = None, reward: float | None = None,
             client: str | None = None, better_than: str | None = None) -> tuple[dict[str, Any], dict[str, Any] | None]:
        """(answer, feedback row or None for a repeat); raises FeedbackRejected with the status.

        The event is spoken for until `settle` (its row is stored) or `reopen` (it is not).
        `client` is who sent the feedback (an API key's id, else the client header; None: unknown).
        `better_than`: a completion's preference over another completion of its prompt.
        """
        try:
            return self._take(event_id, label, reward, client, better_than)
        except FeedbackRejected as exc:
            self.stats.rejected[exc.status] = self.stats.rejected.get(exc.status, 0) + 1
            raise

    def _take(self, event_id: str, label: int | str | None, reward: float | None, client: str | None,
              better_than: str | None = None):
        now = self.clock()
        self._evict(now)
        if not isinstance(event_id, str) or not event_id or len(event_id) > MAX_EVENT_ID_CHARS:
            raise FeedbackRejected(422, f"event_id must be a string of 1..{MAX_EVENT_ID_CHARS} characters")
        ev = self.events.get(event_id)
        tomb = self.tombs.get(event_id) if ev is None else None
        if ev is None and tomb is None:
            raise FeedbackRejected(404, f"unknown event_id {event_id!r}: not served by this model server, or "
                                        f"forgotten (events are kept {self.ttl:g}s + {self.tombstone_s:g}s)")
        accepted = ev.feedback if ev else tomb.feedback
        if tomb is not None and accepted is None:
            raise FeedbackRejected(410, f"event {event_id!r}: {tomb.reason or self._late(now - tomb.created)}")
        kind = type(ev) if ev else tomb.kind
        key = kind.feedback_key(self._label_index(label, ev.labels if ev else tomb.labels), reward, better_than)
        if accepted is not None:
            if accepted == key:
                self.stats.repeats += 1
                # idempotent, even after the event expired: the same answer, nothing written
                return dict(ev.answer if ev else tomb.answer), None
            raise FeedbackRejected(409, f"event {event_id!r} already has feedback {kind.describe(accepted)}; "
                                        "one feedback per prediction")
        if ev.uncertain is not None and ev.uncertain != key:
            raise FeedbackRejected(409, f"event {event_id!r} has feedback {kind.describe(ev.uncertain)} that the "
                                        "replay store may still take; send that same feedback again")
        if now - ev.created > self.ttl:  # not swept yet (a clock that stepped back)
            raise FeedbackRejected(410, f"event {event_id!r}: {self._late(now - ev.created)}")
        peer = self._peer(ev, better_than) if better_than is not None else None
        ev.feedback = key
        ev.answer = ev.feedback_answer(key)
        self._close(event_id, ev)
        self.inflight[event_id] = InFlight(key, ev.policy_version, client)
        row = self._common(f"feedback-{event_id}", self.feedback_table, ev, now) | ev.feedback_row(key, peer)
        return dict(ev.answer), row

    def _peer(self, ev: Any, other_id: str) -> Any:
        """The other event a preference names: held and fit to compare with `ev` (its `check_peer`)."""
        if not isinstance(other_id, str) or not other_id or len(other_id) > MAX_EVENT_ID_CHARS:
            raise FeedbackRejected(422, f"'better_than' must be an event id of 1..{MAX_EVENT_ID_CHARS} characters")
        peer = self.events.get(other_id)
        if peer is None:
            tomb = self.tombs.get(other_id)
            if tomb is None:
                raise FeedbackRejected(404, f"'better_than': unknown event_id {other_id!r}")
            raise FeedbackRejected(410, f"'better_than': event {other_id!r} is gone: "
                                        f"{tomb.reason or 'its feedback window closed'}")
        ev.check_peer(peer)
        return peer

    def settle(self, event_id: str) -> InFlight | None:
        """The taken feedback's row is stored: it counts (joined); returns what was taken (None: nothing was)."""
        taken = self.inflight.pop(event_id, None)
        if taken is None:
            return None
        self.stats.joined += 1
        ev = self.events.get(event_id)
        if ev is not None:
            ev.release()  # the row has what it needs; the event answers repeats
            ev.uncertain = None
        return taken

    def reopen(self, event_id: str, maybe_stored: bool = False) -> None:
        """The taken feedback's row was not stored: the event waits for feedback again.

        `maybe_stored`: the write gave up while the store might still take the row (same id, so a
        retry is stored once); only the same feedback may then be sent again."""
        taken = self.inflight.pop(event_id, None)
        if taken is None:
            return
        self.stats.reopened += 1
        ev = self.events.get(event_id)
        if ev is not None:
            ev.feedback = ev.answer = None
            ev.uncertain = taken.key if maybe_stored else None
            self._open(ev, self.clock())
        elif event_id in self.tombs:  # gone meanwhile: a retry hears why (410)
            self.tombs[event_id].feedback = self.tombs[event_id].answer = None

    # ---- memory ------------------------------------------------------------------
    def _evict(self, now: float) -> None:
        while self.events:
            event_id, ev = next(iter(self.events.items()))
            if now - ev.created <= self.ttl:
                break
            self.events.popitem(last=False)
            self._close(event_id, ev)
            # dated from the expiry, not from now: a late sweep keeps no tombstone longer
            self._bury(event_id, ev, ev.created + self.ttl, self._default(event_id, ev))
        while self.tombs and now - next(iter(self.tombs.values())).gone_at > self.tombstone_s:
            self.tombs.popitem(last=False)

    def _default(self, event_id: str, ev: Any) -> str | None:
        """A closing window's default feedback, queued as its row; the reason a late feedback hears."""
        key = ev.default_feedback() if ev.feedback is None and hasattr(ev, "default_feedback") else None
        if key is None:
            return None
        self.stats.defaulted += 1
        closed = ev.created + self.ttl
        self.defaulted.append(self._common(f"feedback-{event_id}", self.feedback_table, ev, closed)
                              | ev.feedback_row(key, None))
        return f"no feedback came within {self.ttl:g}s, so the default {ev.describe(key)} was stored"

    def take_defaulted(self, now: float | None = None) -> list[dict[str, Any]]:
        """The rows of windows closed by `now` without feedback (their default), handed over once."""
        self._evict(self.clock() if now is None else now)
        rows, self.defaulted = self.defaulted, []
        return rows

    def _open(self, ev: Event, now: float) -> None:
        """Count `ev` as waiting for feedback from its sender; over the sender's cap, its oldest goes."""
        opened = self.open.setdefault(ev.client, OrderedDict())
        opened[ev.event_id] = None
        while len(opened) > self.max_open_per_client:
            event_id, _ = opened.popitem(last=False)
            old = self.events.pop(event_id)
            self.stats.evicted_for_sender += 1
            self._bury(event_id, old, now, f"evicted before its feedback arrived: its sender held more than "
                                           f"{self.max_open_per_client} events waiting for feedback")

    def _close(self, event_id: str, ev: Event) -> None:
        opened = self.open.get(ev.client)
        if opened is not None:
            opened.pop(event_id, None)
            if not opened:  # a sender with nothing open holds no entry
                del self.open[ev.client]

    def _bury(self, event_id: str, ev: Event, gone_at: float, reason: str | None) -> None:
        self.tombs[event_id] = Tombstone(gone_at, reason, ev.feedback, ev.answer, list(ev.labels), ev.created, type(ev))
        if len(self.tombs) > self.max_tombstones:
            self.tombs.popitem(last=False)

    # ---- helpers -----------------------------------------------------------------
    def _late(self, age: float) -> str:
        return f"feedback arrived {age:.1f}s after the prediction; feedback_ttl_s is {self.ttl:g}"

    @staticmethod
    def _label_index(label: int | str | None, labels: Sequence[str]) -> int | None:
        if label is None:
            return None
        if isinstance(label, str):
            if label in labels:
                return labels.index(label)
        elif isinstance(label, int) and not isinstance(label, bool) and 0 <= label < len(labels):
            return label
        raise FeedbackRejected(422, f"label {label!r} is not in the label set {list(labels)} "
                                    f"(a name, or an index 0..{len(labels) - 1})")

    @staticmethod
    def _common(row_id: str, table: str, ev: Event, now: float) -> dict[str, Any]:
        return {"id": row_id, "table": table, "source": "feedback", "actor_id": ev.actor_id,
                "policy_id": ev.policy_id, "policy_version": ev.policy_version,
                "created_at": datetime.fromtimestamp(now, timezone.utc)}


def to_columns(rows: Sequence[Mapping[str, Any]]) -> dict[str, list[Any]]:
    """Row dicts -> the column dict `to_record_batch` / `writer.add` take."""
    return {name: [r[name] for r in rows] for name in rows[0]} if rows else {}
