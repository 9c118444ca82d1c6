"""The milestone lines the docs show are what the terminal says: a block after `<!-- milestones -->`
holds lines cluster/milestones.py prints (the run's clock, a loop of one preset, the words of one
kind of milestone)."""

from __future__ import annotations

import re

from tests.unit.test_docs_truth import _marked, _preset_of, _rel

MILESTONE = re.compile(r"\[ *(?P<t>\d+\.\d)s\] (?P<loop>\S+) +(?P<text>.+)")
# one record per kind of milestone; NUMBERS stand where the doc may say any number
NUMBER, VERSION, WORD = 0.123456, 98765, "qqword"
MILESTONE_RECORDS = [
    {"event": "gate_decision", "decision": "promote", "version": VERSION, "parent": VERSION,
     "heldout_accuracy": NUMBER, "parent_heldout_accuracy": NUMBER},
    {"event": "gate_decision", "decision": "promote", "version": VERSION, "parent": VERSION,
     "heldout_accuracy": None, "reason": WORD},
    {"event": "rollback", "from": VERSION, "to": VERSION, "trigger": WORD},
    {"event": "world_changed", "version": VERSION, "target": VERSION, "n": VERSION, "live_recent_accuracy": NUMBER,
     "target_recent_accuracy": NUMBER, "live_heldout_accuracy": NUMBER, "target_heldout_accuracy": NUMBER},
    {"event": "reached", "heldout_accuracy": NUMBER, "version": VERSION},
    {"event": "solved", "confirm_return": NUMBER},
]


def _milestone_patterns() -> list[re.Pattern]:
    from cluster.milestones import milestone

    out = []
    for record in MILESTONE_RECORDS:
        text = re.escape(milestone(record))
        text = text.replace(re.escape(f"{NUMBER:.3f}"), r"\d+\.\d{3}").replace(str(VERSION), r"\d+")
        out.append(re.compile(text.replace(WORD, r".+")))
    return out


def test_milestone_examples_are_what_the_terminal_says():
    """A block after `<!-- milestones -->` holds lines cluster/milestones.py prints: the run's clock,
    a loop of one preset, and the words of one kind of milestone."""
    blocks = _marked("milestones")
    assert blocks, "no `<!-- milestones -->` block in the docs"
    patterns = _milestone_patterns()
    for doc, _, block in blocks:
        for line in block.splitlines():
            m = MILESTONE.fullmatch(line)
            assert m, f"{_rel(doc)}: {line!r} is not a milestone line ([clock] loop words)"
            assert any(p.fullmatch(m["text"]) for p in patterns), \
                f"{_rel(doc)}: {m['text']!r} is not what cluster/milestones.py says for any event"
        _preset_of(frozenset(MILESTONE.fullmatch(line)["loop"] for line in block.splitlines()))
