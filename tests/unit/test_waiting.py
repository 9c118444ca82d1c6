"""A feedback loop's `wait=` figure names the one thing it waits on."""

from __future__ import annotations

from cluster.waiting import feedback_wait
from core.config.gate import GateSection

SECTION = GateSection(stages=["heldout", "shadow", "canary"])


def wait(**kw):
    args = dict(learner_up=True, updates=0, joined=0, fresh_rows=16, candidates=(10, 50), gate={}, section=SECTION)
    return feedback_wait(**{**args, **kw})


def test_before_the_learner_and_before_the_first_batch():
    assert wait(learner_up=False) == "learner-start"
    assert wait(joined=5) == "feedback(5/16)"
    # with the first batch's rows there, the updates run (their count is reported every few)
    assert wait(joined=16) == wait(joined=500) == "candidate@upd10"


def test_between_candidates_it_names_the_update_that_makes_the_next():
    assert wait(updates=1) == "candidate@upd10"
    assert wait(updates=10) == "candidate@upd50"
    assert wait(updates=50) == "candidate@upd100"
    assert wait(updates=73) == "candidate@upd100"


def test_a_stage_on_live_traffic_shows_its_evidence_so_far():
    canary = {"in_flight": {"stage": "canary", "version": 3}, "stages": {"canary": {"candidate_requests": 12}}}
    assert wait(updates=60, gate=canary) == "canary(v3,12/30)"
    shadow = {"in_flight": {"stage": "shadow", "version": 4}, "stages": {"shadow": {"rows": 120, "min_rows": 300}}}
    assert wait(updates=60, gate=shadow) == "shadow(v4,120/300)"
    assert wait(gate={"in_flight": {"stage": "heldout", "version": 2}, "stages": {}}) == "heldout(v2)"
