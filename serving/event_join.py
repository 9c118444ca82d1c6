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

Memory stays bounded: events leave after `feedback_ttl_s` (or when more than
`max_events` are held), and leave behind a small tombstone (no text) for
`tombstone_s` more, so a late client hears 410 "expired" rather than 404.
"""

from __future__ import annotations

import time
from collections import OrderedDict
from dataclasses import dataclass, field
from datetime import datetime, timezone
from typing import Any, Callable, Iterable, Mapping, Sequence

from serving.join_window import PrequentialWindows
from serving.join_rules import FeedbackRejected, check_reward, describe, greedy_verdict

MAX_EVENT_ID_CHARS = 128


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
    propensity: float | None = None  # the probability `prediction` was served with (core/exploration.py)
    action_probs: list[float] | None = None  # the serving distribution it was drawn from
    shadow_version: int | None = None  # the gate's shadow version, when it answered this text too
    shadow_prediction: int | None = None  # its greedy answer (the client got `prediction`)
    text_pair: str | None = None  # the second text of a pair input; None: one text
    created: float = 0.0  # set by the join's clock
    feedback: tuple[int | None, float | None] | None = None  # what was accepted (label, reward)
    answer: dict[str, Any] | None = None  # the answer given to it (repeated verbatim)


@dataclass
class Tombstone:
    gone_at: float
    reason: str | None  # why it is gone, said in the 410; None: its feedback window closed
    feedback: tuple[int | None, float | None] | None  # kept so a late repeat still gets its answer
    answer: dict[str, Any] | None
    labels: list[str]
    created: float


@dataclass
class JoinStats:
    events: int = 0
    joined: int = 0
    repeats: int = 0
    rejected: dict[int, int] = field(default_factory=dict)
    evicted_for_capacity: int = 0


class EventJoin:
    def __init__(self, feedback_ttl_s: float, *, feedback_table: str = "feedback", text_table: str | None = "text",
                 max_events: int = 200_000, tombstone_s: float | None = None, max_tombstones: int | None = None,
                 window: int = 300, max_client_share: float = 1.0, clock: Callable[[], float] = time.time):
        if feedback_ttl_s <= 0 or max_events < 1 or window < 1:
            raise ValueError("feedback_ttl_s, max_events and window must be positive")
        self.ttl, self.max_events, self.window = feedback_ttl_s, max_events, window
        self.tombstone_s = feedback_ttl_s if tombstone_s is None else tombstone_s
        self.max_tombstones = max_events if max_tombstones is None else max_tombstones
        self.feedback_table, self.text_table, self.clock = feedback_table, text_table, clock
        self.events: OrderedDict[str, Event] = OrderedDict()  # insertion (= time) order: evict from the front
        self.tombs: OrderedDict[str, Tombstone] = OrderedDict()
        self.windows = PrequentialWindows(window, max_client_share)
        self.stats = JoinStats()

    # ---- events ------------------------------------------------------------------
    def record(self, events: Iterable[Event | Mapping[str, Any]]) -> list[dict[str, Any]]:
        """Remember served events; returns their rows for the text table (empty when it is off)."""
        now = self.clock()
        self._evict(now)
        rows = []
        for ev in events:
            ev = ev if isinstance(ev, Event) else Event(**ev)
            if ev.event_id in self.events or ev.event_id in self.tombs:
                continue  # a retried record call (Ray retries are at-least-once)
            ev.created = now
            self.events[ev.event_id] = ev
            self.stats.events += 1
            if self.text_table is not None:
                rows.append(self._common(f"text-{ev.event_id}", self.text_table, ev, now) | {"text": ev.text})
                if ev.text_pair is not None:
                    rows.append(self._common(f"text-{ev.event_id}-pair", self.text_table, ev, now)
                                | {"text": ev.text_pair})
        while len(self.events) > self.max_events:  # a burst beyond capacity: the oldest go first
            event_id, ev = self.events.popitem(last=False)
            self.stats.evicted_for_capacity += 1
            self._bury(event_id, ev, now, f"evicted before its feedback arrived: the server holds at most "
                                          f"{self.max_events} events")
        return rows

    def join(self, event_id: str, label: int | str | None = None, reward: float | None = None,
             client: str | None = None) -> tuple[dict[str, Any], dict[str, Any] | None]:
        """(answer, feedback row or None for a repeat); raises FeedbackRejected with the status.

        `client` is who sent the feedback (an API key's id, else the client header; None: unknown).
        """
        try:
            return self._join(event_id, label, reward, client)
        except FeedbackRejected as exc:
            self.stats.rejected[exc.status] = self.stats.rejected.get(exc.status, 0) + 1
            raise

    def _join(self, event_id: str, label: int | str | None, reward: float | None, client: str | None):
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
        if label is None and reward is None:
            raise FeedbackRejected(422, "feedback needs a label or a reward")
        key = (self._label_index(label, ev.labels if ev else tomb.labels), check_reward(reward))
        if accepted is not None:
            if accepted == key:
                self.stats.repeats += 1
                # idempotent, even after the event expired: the same answer, nothing written
                return dict(ev.answer if ev else tomb.answer), None
            raise FeedbackRejected(409, f"event {event_id!r} already has feedback {describe(accepted)}; "
                                        "one feedback per prediction")
        if now - ev.created > self.ttl:  # not swept yet (a clock that stepped back)
            raise FeedbackRejected(410, f"event {event_id!r}: {self._late(now - ev.created)}")
        label_idx, reward = key
        correct = None if label_idx is None else label_idx == ev.prediction
        ev.feedback = key
        ev.answer = {"event_id": event_id, "accepted": True, "model_version": ev.policy_version, "correct": correct}
        text, text_pair = ev.text, ev.text_pair
        ev.text, ev.text_pair = "", None  # the row has them; the event only answers repeats from now on
        self.windows.add(ev.policy_version, *greedy_verdict(ev, label_idx, reward), client)
        self.stats.joined += 1
        row = self._common(f"feedback-{event_id}", self.feedback_table, ev, now) | {
            "event_id": event_id, "text": text, "text_pair": text_pair, "prediction": ev.prediction,
            "probs": list(ev.probs),
            "label": label_idx, "reward": reward, "propensity": ev.propensity,
            "action_probs": None if ev.action_probs is None else list(ev.action_probs),
        }
        if ev.shadow_prediction is not None:  # the gate's, split off before the replay store (join_rules.py)
            row.update(shadow_version=ev.shadow_version, shadow_prediction=ev.shadow_prediction)
        return dict(ev.answer), row

    # ---- prequential accuracy (serving/join_window.py) ----------------------------
    def prequential(self) -> dict[int, tuple[float, int]]:
        return self.windows.prequential()

    def clients(self) -> dict[int, int]:
        return self.windows.clients()

    # ---- memory ------------------------------------------------------------------
    def _evict(self, now: float) -> None:
        while self.events:
            event_id, ev = next(iter(self.events.items()))
            if now - ev.created <= self.ttl:
                break
            self.events.popitem(last=False)
            # dated from the expiry, not from now: a late sweep keeps no tombstone longer
            self._bury(event_id, ev, ev.created + self.ttl, None)
        while self.tombs and now - next(iter(self.tombs.values())).gone_at > self.tombstone_s:
            self.tombs.popitem(last=False)

    def _bury(self, event_id: str, ev: Event, gone_at: float, reason: str | None) -> None:
        self.tombs[event_id] = Tombstone(gone_at, reason, ev.feedback, ev.answer, ev.labels, ev.created)
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
