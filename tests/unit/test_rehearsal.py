"""The learner's memory without a cluster: the balanced rehearsal buffer, the distillation term,
the live reference it distills to, and the controller's answer to a refusal streak during a drift."""

from __future__ import annotations

from collections import Counter

import numpy as np
import pytest
import torch

from core.adapt.controller import Controller
from core.adapt.detectors import Alarm
from core.config.adapt import AdaptSection
from core.config.memory import RefusalSection, raised_memory
from learners.distill import LiveReference, distill_loss
from learners.feedback_source import FeedbackBatch, Reservoir
from learners.objective import WorkerContext
from learners.rehearsal import BalancedMemory, fair_shares, restore_memory


def _rows(group: str, start: int, n: int) -> FeedbackBatch:
    texts = [f"{group}-{i}" for i in range(start, start + n)]
    return FeedbackBatch.from_rows(texts, [0] * n, [0.5] * n, label=[i % 2 for i in range(n)],
                                   created_at=list(range(start, start + n)))


def _stream(memory, sizes: dict[str, int], batch: int = 20, seed: int = 0) -> None:
    rng = np.random.default_rng(seed)
    for group, n in sizes.items():  # group after group, as a grouped stream arrives
        for start in range(0, n, batch):
            memory.add(_rows(group, start, min(batch, n - start)), rng)


def _groups_of(sizes: dict[str, int]) -> dict[str, str]:
    return {f"{g}-{i}": g for g, n in sizes.items() for i in range(n)}


# ---- fair shares and the balanced buffer ------------------------------------------------------
def test_fair_shares_are_even_where_demand_allows_and_never_above_it():
    assert fair_shares([100, 100, 100], 90) == [30, 30, 30]
    assert fair_shares([10, 100, 100], 90) == [10, 40, 40]  # the small one keeps all; the rest share
    assert fair_shares([5, 5], 90) == [5, 5]  # less demand than room
    assert sum(fair_shares([7, 9, 11], 10)) == 10 and fair_shares([], 5) == []


def test_a_long_group_does_not_crowd_out_a_short_one():
    sizes = {"hotel": 3000, "book": 600, "laptop": 1500}
    balanced, uniform = BalancedMemory(900, era_rows=500, groups=_groups_of(sizes)), Reservoir(900)
    _stream(balanced, sizes)
    _stream(uniform, sizes)
    held = balanced.held()
    assert len(balanced) == 900 and held == {"hotel": 300, "book": 300, "laptop": 300}
    by_uniform = Counter(t.split("-")[0] for t in uniform.rows.text)
    assert by_uniform["hotel"] > 2.5 * by_uniform["book"]  # the reservoir follows the stream's proportions
    draw = balanced.sample(90, np.random.default_rng(1))
    assert Counter(t.split("-")[0] for t in draw.text) == {"hotel": 30, "book": 30, "laptop": 30}
    assert len(set(draw.text)) == 90  # rows, not copies


def test_within_a_group_every_era_keeps_its_share():
    sizes = {"hotel": 4000}
    memory = BalancedMemory(400, era_rows=1000, groups=_groups_of(sizes))
    _stream(memory, sizes)
    eras = Counter(int(t.split("-")[1]) // 1000 for t in memory.sample(400, np.random.default_rng(0)).text)
    assert eras == {0: 100, 1: 100, 2: 100, 3: 100}  # the first thousand rows as many as the newest


def test_texts_the_data_does_not_know_are_balanced_over_time():
    memory = BalancedMemory(300, era_rows=1000)
    _stream(memory, {"x": 3000})
    assert memory.held() == {"": 300} and {e for _, e in memory.strata} == {0, 1, 2}


def test_the_buffer_survives_a_checkpoint_and_a_change_of_kind():
    sizes = {"a": 500, "b": 500}
    memory = BalancedMemory(200, era_rows=250, groups=_groups_of(sizes))
    _stream(memory, sizes)
    state = memory.state_dict()
    again = BalancedMemory(200, era_rows=250, groups=_groups_of(sizes))
    again.load_state_dict(state)
    assert again.held() == memory.held() and again.seen == 1000
    draws = [sorted(m.sample(200, np.random.default_rng(0)).text) for m in (again, memory)]
    assert draws[0] == draws[1]
    uniform = Reservoir(150)
    restore_memory(uniform, state)  # balanced -> uniform
    assert len(uniform) == 150 and uniform.seen == 1000
    back = BalancedMemory(100, era_rows=250)
    restore_memory(back, uniform.state_dict())  # uniform -> balanced: one stratum, shrunk to fit
    assert len(back) == 100


# ---- distillation ----------------------------------------------------------------------------
def test_the_distillation_term_is_zero_at_the_teacher_and_pulls_toward_it():
    teacher = torch.tensor([[2.0, -1.0], [0.5, 0.0]])
    assert distill_loss(teacher.clone(), teacher, 2.0).item() == pytest.approx(0.0, abs=1e-7)
    student = torch.tensor([[-1.0, 1.0], [0.0, 0.5]], requires_grad=True)
    loss = distill_loss(student, teacher, 2.0)
    assert loss.item() > 0
    loss.backward()
    stepped = (student - 0.5 * student.grad).detach()
    assert distill_loss(stepped, teacher, 2.0).item() < loss.item()
    assert distill_loss(torch.zeros(0, 2), torch.zeros(0, 2), 1.0).item() == 0.0


def test_the_reference_follows_only_candidates_the_gate_made_live():
    model = torch.nn.Linear(2, 2)
    ref = LiveReference(model, WorkerContext())
    start = ref.model.weight.detach().clone()
    with torch.no_grad():
        model.weight.add_(1.0)
    ref.snapshot(10, model, {"decision": "refuse"})
    assert not ref.follow() and torch.equal(ref.model.weight, start)
    with torch.no_grad():
        model.weight.add_(1.0)
    ref.snapshot(20, model, {"decision": "promote"})
    promoted = model.weight.detach().clone()
    with torch.no_grad():
        model.weight.add_(1.0)  # training goes on: the reference is the snapshot, not the model now
    assert ref.follow() and torch.equal(ref.model.weight, promoted) and ref.version_update == 20
    assert not ref.pending and not ref.model.weight.requires_grad


# ---- the controller and a refusal streak ------------------------------------------------------
def _acted(ctl: Controller, events: int) -> None:
    assert ctl.on_alarm(Alarm("correctness", "adwin", events, 0.9, 0.7), events).actions


def test_a_refusal_streak_during_a_drift_raises_the_memory_a_level_at_a_time():
    ctl = Controller(AdaptSection(enabled=True, cooldown_events=10, refusals={"streak": 3, "max_levels": 2}))
    for _ in range(5):
        assert ctl.on_verdict("refuse", 100) is None  # no drift yet: refusals are the gate's business
    _acted(ctl, 200)
    assert ctl.on_verdict("refuse", 210) is None and ctl.on_verdict("refuse", 220) is None
    first = ctl.on_verdict("refuse", 230)
    assert first.actions == [{"action": "remember", "level": 1}] and first.to_dict()["signal"] == "refusals"
    assert first.to_dict()["at"] == 3
    ctl.on_verdict("refuse", 240)
    ctl.on_verdict("promote", 250)  # a promotion ends the streak
    assert [ctl.on_verdict("refuse", 260 + i) for i in range(2)] == [None, None]
    assert ctl.on_verdict("refuse", 280).actions[0]["level"] == 2
    for i in range(2):
        ctl.on_verdict("refuse", 290 + i)
    capped = ctl.on_verdict("refuse", 300)
    assert not capped.actions and "already raised 2 times" in capped.suppressed and ctl.memory_level == 2


def test_refusals_long_after_the_alarm_are_not_a_drift():
    ctl = Controller(AdaptSection(enabled=True, refusals={"streak": 2, "drift_events": 500}))
    _acted(ctl, 100)
    assert ctl.on_verdict("refuse", 700) is None and ctl.on_verdict("refuse", 710) is None
    assert ctl.on_verdict("dropped", 720) is None  # neither a refusal nor a promotion


def test_raised_memory_steps_and_caps():
    cfg = RefusalSection(rehearsal_step=0.1, max_rehearsal=0.7, distill_step=0.5, max_distill=1.2)
    assert raised_memory(0.5, 0.5, cfg, 0) == (0.5, 0.5)
    assert raised_memory(0.5, 0.5, cfg, 1) == pytest.approx((0.6, 1.0))
    assert raised_memory(0.5, 0.5, cfg, 5) == pytest.approx((0.7, 1.2))
    assert raised_memory(0.9, 2.0, cfg, 1) == (0.9, 2.0)  # a section above the caps is kept
