"""A candidate's way through `gate.stages`, once the gate has loaded it (gate/gate.py's flow).

    first version      nothing live: live at once, `initial`
    each stage         judge(candidate): refuse -> stored, never live; promote -> the next stage;
                       pending -> a stage on live traffic runs its experiment: the candidate is
                       stored and the registry stage of that name points at it (`<stage>_started`)
    settle             the pending stage's verdict (`<stage>_ended`): promote -> the next stage, or
                       live if it was the last; refuse -> the registry stage cleared, the version
                       stays stored; a live version that moved meanwhile refuses the candidate
    all passed         live on every subscriber through the publisher

Every decision goes into the registry lineage (metadata `gate`: decision, reason, each stage's
verdict and evidence in `stages`) and a `gate_decision` event; with `adapt`, the controller hears
it (a refusal streak during a drift raises the learner's memory: an `adapt` event).  Called under the gate's decision lock.
"""

from __future__ import annotations

import time
from typing import Any

from gate.lineage import with_gate
from gate.pointer import promote_over
from gate.policy import Pending, Policy
from gate.stage import Candidate, Verdict
from gate.stages.heldout import measure

EVENT_FIELDS = ("test", "diff", "p_value", "ci", "wins", "losses", "n", "eval_s", "stages")


def first_version(policy: Policy, cand: Candidate) -> dict[str, Any]:
    acc, reason = cand.accuracy, "first version: nothing live to compare with"
    gate = {"decision": "initial", "test": "none", "reason": reason, "stages": [], "decided_at": time.time()}
    if acc is not None:
        gate.update(n=int(cand.correct.size), candidate_accuracy=acc)
    cand.meta = with_gate(cand.metadata, None, acc, None, gate)
    cand.version = int(policy.shared.publisher.publish(policy.policy_id, cand.weights, cand.meta, policy.kind.spec,
                                                       cand.files))
    policy.initial_accuracy = acc
    _live(policy, cand)
    return record(policy, cand, "initial", reason)


def unservable(policy: Policy, cand: Candidate, reason: str) -> dict[str, Any]:
    """A candidate that cannot answer: refused before any stage, never stored."""
    cand.meta = {"gate": {"decision": "refuse", "reason": reason, "stages": []}}
    return record(policy, cand, "refuse", reason)


def judge(policy: Policy, cand: Candidate) -> dict[str, Any]:
    """Measure the candidate against live (the held-out set, for a kind that has one), then the stages."""
    cand.live_accuracy = policy.accuracy(cand.live)
    cand.measured = measure(policy, cand) if cand.correct is not None else None
    gate = {**(cand.measured.to_dict() if cand.measured else {}), "compared_with": cand.live, "stages": []}
    cand.meta = with_gate(cand.metadata, cand.live, cand.accuracy, cand.live_accuracy, gate)
    reasons = []
    if cand.measured is not None and "heldout" not in policy.settings.stages:
        reasons.append(f"held-out set measured ({cand.accuracy:.3f}), not a stage")
    return run_stages(policy, cand, 0, reasons)


def run_stages(policy: Policy, cand: Candidate, start: int, reasons: list[str]) -> dict[str, Any]:
    names = policy.settings.stages
    for index in range(start, len(names)):
        stage = policy.stages[names[index]]
        verdict = stage.judge(cand)
        if verdict.decision == "pending":
            return _start(policy, cand, Pending(stage, cand, index), "; ".join([*reasons, verdict.reason]), verdict)
        cand.gate["stages"].append({"stage": stage.name, "decision": verdict.decision, "reason": verdict.reason,
                                    **verdict.evidence})
        if verdict.decision != "promote":
            return finish(policy, cand, "refuse", verdict.reason)
        reasons.append(verdict.reason)
    return finish(policy, cand, "promote", "; ".join(reasons) or "no stages")


def _start(policy: Policy, cand: Candidate, pending: Pending, reason: str, verdict: Verdict) -> dict[str, Any]:
    """Store the candidate and point the registry stage at it: its experiment on live traffic begins."""
    name = pending.stage.name
    _stamp(cand)
    cand.gate.update(decision=name, reason=reason)
    _store(policy, cand)
    policy.registry.promote(policy.policy_id, cand.version, stage=name)
    policy.pending = pending
    policy.emit(f"{name}_started", policy_id=policy.policy_id, version=cand.version, live=cand.live,
                **verdict.evidence)
    return record(policy, cand, name, reason)


def settle(policy: Policy, pending: Pending, verdict: Verdict) -> dict[str, Any]:
    """A live-traffic stage decided: on to the next stage, live, or refused."""
    stage, cand = pending.stage, pending.candidate
    evidence = {"stage": stage.name, "decision": verdict.decision, "reason": verdict.reason, **verdict.evidence}
    cand.gate["stages"].append(evidence)
    policy.registry.clear(policy.policy_id, stage.name)
    policy.pending = None
    decision, reason = verdict.decision, verdict.reason
    live_now = policy.live()
    if decision == "promote" and live_now != cand.live:  # judged against a version no longer live
        decision, reason = "refuse", f"{reason}; but live changed to v{live_now} meanwhile"
    last = pending.index + 1 == len(policy.settings.stages)
    went_live = False
    if decision == "promote" and last:
        cand.gate.update(decision=decision, reason=reason)
        went_live = _go_live(policy, cand)
        if not went_live:  # live moved between the check above and the swap
            decision, reason = "refuse", f"{reason}; but live changed meanwhile"
    evidence.update(decision=decision, reason=reason)
    policy.emit(f"{stage.name}_ended", policy_id=policy.policy_id, version=cand.version, **evidence)
    if decision != "promote":
        policy.records.count("aborted")
    elif not last:
        return run_stages(policy, cand, pending.index + 1, [reason])
    return finish(policy, cand, decision, reason, went_live)


def finish(policy: Policy, cand: Candidate, decision: str, reason: str, went_live: bool = False) -> dict[str, Any]:
    _stamp(cand)
    cand.gate.update(decision=decision, reason=reason)
    if decision == "promote" and cand.version is None:
        cand.version = int(policy.shared.publisher.publish(policy.policy_id, cand.weights, cand.meta,
                                                           policy.kind.spec, cand.files))
        _live(policy, cand)
    elif not went_live:  # refused: stored for the lineage, never live
        _store(policy, cand)
    return record(policy, cand, decision, reason)


def _go_live(policy: Policy, cand: Candidate) -> bool:
    """A stored candidate made live, only if the version it was judged against still is."""
    policy.registry.update_metadata(policy.policy_id, cand.version, gate=cand.gate)
    if not promote_over(policy.registry, policy.policy_id, cand.version, cand.live):
        return False
    policy.shared.publisher.restore(policy.policy_id, cand.weights, cand.version, policy.kind.spec)
    _live(policy, cand)
    return True


def _store(policy: Policy, cand: Candidate) -> None:
    if cand.version is None:
        cand.version = policy.registry.publish(policy.policy_id, cand.weights, cand.meta, files=cand.files)
        policy.keep_correct(cand.version, cand.correct)
    else:
        policy.registry.update_metadata(policy.policy_id, cand.version, gate=cand.gate)


def _live(policy: Policy, cand: Candidate) -> None:
    """The candidate's version is live now: its model and held-out scores are kept for what follows."""
    policy.keep_correct(cand.version, cand.correct)
    policy.shared.keep_model(policy.policy_id, cand.version, cand.model)
    policy.went_live(cand.version)


def _stamp(cand: Candidate) -> None:
    cand.gate.setdefault("decided_at", time.time())
    cand.gate.setdefault("eval_s", time.perf_counter() - cand.t0)


def record(policy: Policy, cand: Candidate, decision: str, reason: str) -> dict[str, Any]:
    gate = cand.gate
    rec = policy.records.decision(cand.version, cand.live, decision, reason, cand.accuracy, cand.live_accuracy,
                                  cand.meta.get("parent_version"))
    extra = {k: gate.get(k) for k in EVENT_FIELDS}
    groups = policy.kind.groups
    if groups is not None and cand.correct is not None:
        extra["group_accuracy"] = {str(g): float(cand.correct[groups == g].mean()) for g in sorted(set(groups.tolist()))}
    policy.emit("gate_decision", policy_id=policy.policy_id, **rec, **extra)
    _streak(policy, decision)
    return {"policy_id": policy.policy_id, **rec, "live_version": policy.live_version,
            "gate": {k: v for k, v in gate.items() if k != "decided_at"}}


def _streak(policy: Policy, decision: str) -> None:
    """The adaptive controller hears every verdict: a refusal streak during a drift raises the learner's memory."""
    if policy.adaptation is None:
        return
    with policy.shared.mu:
        raised = policy.adaptation.on_verdict(decision, policy.live_version)
    for d in raised:
        policy.emit("adapt", policy_id=policy.policy_id, action=[a["action"] for a in d["actions"]] or None, **d)
