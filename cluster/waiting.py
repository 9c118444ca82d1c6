"""What a feedback loop waits for, one token for its progress line (`wait=...`).

    wait=learner-start        the learner's workers are starting
    wait=feedback(12/16)      fresh feedback rows joined / the first update's share of a batch
    wait=candidate@upd50      the update that hands the gate its next candidate
    wait=canary(v3,12/30)     a gate stage on live traffic: the candidate's answers / the least it decides on

A loop that shows no new version for a while is waiting on one thing at a time:
its learner starting, the first batch of fresh feedback, the update that makes
the next candidate, or a gate stage gathering evidence on live traffic.  The
progress line names it, so a quiet loop reads as waiting rather than stuck.
"""

from __future__ import annotations

from typing import Any

from core.config.gate import GateSection


def feedback_wait(*, learner_up: bool, updates: int, joined: int, fresh_rows: int, candidates: tuple[int, int],
                  gate: dict[str, Any], section: GateSection) -> str | None:
    """`candidates`: (the update of the first candidate, updates between the later ones)."""
    flight = gate.get("in_flight")
    if flight:
        return _stage_wait(flight, gate.get("stages", {}).get(flight["stage"], {}), section)
    if not learner_up:
        return "learner-start"
    if updates == 0 and joined < fresh_rows:
        return f"feedback({joined}/{fresh_rows})"
    first, every = candidates
    return f"candidate@upd{first if updates < first else (updates // every + 1) * every}"


def _stage_wait(flight: dict[str, Any], figures: dict[str, Any], section: GateSection) -> str:
    stage, version = flight["stage"], flight.get("version")
    if stage == "canary" and "candidate_requests" in figures:
        return f"canary(v{version},{figures['candidate_requests']}/{section.canary.min_requests})"
    if stage == "shadow" and "rows" in figures:
        return f"shadow(v{version},{figures['rows']}/{figures.get('min_rows', section.shadow.min_rows)})"
    return f"{stage}(v{version})"
