"""What the joined feedback says to the gate: each version's prequential window, and the rule that holds feedback out.

The rows come from the real join (serving/event_join.py), as the joiner hands them over; the text
kind reads each (gate/kinds/text.py) and the rollback guard's windows (gate/stages/rollback.py) keep them.
"""

from __future__ import annotations

import pytest

from gate.kinds.text import TextKind
from gate.slices import Slices
from gate.stages.rollback import PrequentialWindows
from serving.join import EventJoin
from tests.unit.test_feedback_join import Clock, _event

KIND = TextKind([("t", 0)])


class Joined:
    """The join and the gate's windows over what it joins: each joined feedback counts as it is handed over."""

    def __init__(self, window: int, max_client_share: float = 1.0, clock=None):
        self.join = EventJoin(60.0, **({"clock": clock} if clock else {}))
        self.windows = PrequentialWindows(window, max_client_share)

    def record(self, events):
        self.join.record(events)

    def feedback(self, event_id: str, label=None, reward=None, client: str | None = None) -> None:
        _, row = self.join.join(event_id, label, reward, client=client)
        ev = KIND.read({"type": "feedback", "row": row, "client": client})
        self.windows.add(ev.version, *ev.window, ev.client)

    def prequential(self):
        return self.windows.prequential()

    def clients(self):
        return self.windows.clients()


def test_prequential_accuracy_per_version_over_a_window():
    joined = Joined(window=4)
    joined.record([_event(i, prediction=1, version=1 + (i >= 6)) for i in range(12)])
    for i in range(6):  # version 1: pos, neg, pos, neg, pos, neg -> window of 4 keeps the last 4
        joined.feedback(f"e{i}", label=["pos", "neg"][i % 2])
    joined.feedback("e6", label="pos")
    joined.feedback("e7", reward=0.5)  # reward-only counts as its value
    assert joined.prequential() == {1: (2.0, 4), 2: (1.5, 2)}


def test_prequential_judges_the_greedy_answer_when_serving_explores():
    joined = Joined(window=10, clock=Clock())
    # probs say the greedy answer is 1; events 0-1 were served 1 (propensity 0.8), 2-3 explored to 0
    joined.record([{**_event(i, prediction=1 if i < 2 else 0), "probs": [0.2, 0.8], "propensity": 0.8 if i < 2 else 0.2}
                   for i in range(5)])
    joined.feedback("e0", reward=1.0)
    joined.feedback("e1", reward=0.0)
    joined.feedback("e2", reward=1.0)  # the explored answer was right: says nothing about the greedy one
    joined.feedback("e3", reward=0.0)
    assert joined.prequential() == {3: (0.5 * 4, 4)}  # (1 + 0) / 2 over the greedy-served rows
    joined.feedback("e4", label=1)  # a label judges the greedy answer whatever was served (0 here)
    correct, n = joined.prequential()[3]
    assert n == 5 and correct == pytest.approx((1.25 + 0 + 1) / (1.25 + 1.25 + 1) * 5)


def test_one_client_moves_the_window_by_its_share_and_counts_once():
    joined = Joined(window=100, max_client_share=0.2)
    joined.record([_event(i, prediction=1) for i in range(100)])
    for i in range(50):  # honest clients: all right
        joined.feedback(f"e{i}", "pos", client=f"user{i % 10}")
    for i in range(50, 100):  # one client: all wrong
        joined.feedback(f"e{i}", "neg", client="mallory")
    correct, n = joined.prequential()[3]
    assert n == 100 and correct == pytest.approx(100 * 50 / 70)  # mallory's newest 20 rows count, not 50
    assert joined.clients() == {3: 11}
    lone = Joined(window=100, max_client_share=0.2)
    lone.record([_event(i, prediction=1) for i in range(100)])
    for i in range(100):
        lone.feedback(f"e{i}", "neg", client="mallory")
    assert lone.clients() == {3: 1} and lone.prequential()[3] == (0.0, 100)


def test_anonymous_feedback_is_one_client_for_min_clients_and_the_share_cap():
    """Feedback with no key and no client header: however many people send it, nothing says they
    are more than one, so it counts once toward min_clients and shares one cap."""
    anonymous = Joined(window=100, max_client_share=0.2)
    anonymous.record([_event(i, prediction=1) for i in range(100)])
    for i in range(50):  # ten named clients: all right
        anonymous.feedback(f"e{i}", "pos", client=f"user{i % 10}")
    for i in range(50, 100):  # fifty anonymous senders: all wrong
        anonymous.feedback(f"e{i}", "neg")
    assert anonymous.clients() == {3: 11}  # ten named + one anonymous, not 10 + 50
    correct, n = anonymous.prequential()[3]
    assert n == 100 and correct == pytest.approx(100 * 50 / 70)  # 20 anonymous rows count, as one client's would
    alone = Joined(window=100, max_client_share=0.2)
    alone.record([_event(i, prediction=1) for i in range(30)])
    for i in range(30):
        alone.feedback(f"e{i}", "neg")
    assert alone.clients() == {3: 1}  # below any gate.min_clients above 1: no rollback from them alone


def test_the_held_out_share_is_salted_per_rule():
    a, b = Slices(recent=0.25), Slices(recent=0.25)
    assert len(a.salt) == 32 and a.salt != b.salt  # an outsider cannot compute which events are held out
    held = [e for e in (f"e{i}" for i in range(400)) if a(e, labeled=True) == "recent"]
    assert 60 < len(held) < 140 and all(a(e, labeled=False) is None for e in held)  # only labeled feedback


def test_the_rule_holds_out_only_what_the_gate_needs():
    from core.config.adapt import AdaptSection
    from core.config.gate import GateSection

    assert Slices.of(GateSection()) is None  # the held-out stage alone: nothing held out of training
    both = Slices.of(GateSection(stages=["heldout", "ope"]), AdaptSection(enabled=True, recent_fraction=0.2))
    assert (both.recent, both.ope) == (0.2, 0.1)
