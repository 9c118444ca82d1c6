"""The publish gate: one for every kind of policy; what goes live, stage by stage, on evidence.

    learner --submit(weights, files, metadata)--> Gate
        the newest candidate of a policy wins: one still waiting when a newer comes is `dropped`
        a stage's experiment on live traffic in flight (busy)            -> `dropped`
        the kind loads it (gate/kinds/); one that cannot answer (fault)  -> refused, never stored
        nothing live yet                                                 -> live at once: `initial`
        the kind's held-out set (if it has one) scores it against live: the lineage's accuracy
        gate.stages, in order (gate/decide.py), each stage's judge(candidate):
            refuse   stored, never live                                  -> `refuse`
            promote  on to the next stage
            pending  a stage on live traffic (shadow, canary) holds it, stored, and decides later
        every stage passed                       -> live on every subscriber (publisher) `promote`

    joiner, /act clients, replicas --evidence(items)--> Gate     (gate/evidence.py: one call)
        the kind reads each item: a joined feedback, an answered request, an episode, a version
        that cannot answer
        every stage feeds on what it uses; the drift detectors and the recent slice (`adapt`) too
        the pending stage, once its evidence suffices: its verdict   -> the next stage, live, refused
        the rollback guard (gate/stages/rollback.py) on live:
            the version before live better on live's labeled feedback (paired test) -> rolled back
            both versions fell on it, the earlier no better                -> `world_changed`, no rollback
            a version that cannot answer                             -> its trial ended, or rolled back

    operator --rollback(to)--> Gate -> the registry pointer moved, every subscriber told

Which feedback is held out of training for the gate is its rule too (gate/slices.py), applied by
the joiner before it writes a row.  Every decision is stored in the registry (metadata `gate`:
each stage's verdict and evidence; `metrics.heldout_accuracy`) and reported through
`emit(kind, **fields)`; `summary()` is what the loop reports.

Plain Python: tests drive it without Ray; cluster/gate_actor.py is its Ray shell.  Candidates
are decided one at a time (a lock), while evidence keeps arriving on another thread.
"""

from __future__ import annotations

import logging
import threading
import time
from collections import OrderedDict
from typing import Any, Callable, Mapping, Sequence

from core.config.adapt import AdaptSection
from core.config.gate import GateSection
from core.storage.registry import LoadedPolicy, PolicyRegistry
from gate import decide
from gate.evidence import Evidence
from gate.lineage import events_seen
from gate.pointer import GateError
from gate.policy import MODELS_KEPT, Policy, Records, plain_emit
from gate.publisher import Publisher
from gate.stage import Candidate, check_stages

log = logging.getLogger(__name__)


class Gate:
    """registry   the policy registry (or its URI): the source of truth for what is live
    kind       the policy kind's adapter (gate/kinds/)
    config     the `gate` section: stages, shared statistics, each stage's settings
    publisher  makes a version live on every subscriber (gate/publisher.py)
    emit       emit(kind, **fields) for every decision; the wiring writes them to events.jsonl
    adapt      `AdaptSection`: with `enabled`, drift detectors on live's evidence whose alarms
               boost the learner, and the recent slice"""

    def __init__(self, registry: PolicyRegistry | str, kind: Any, config: GateSection | None = None,
                 publisher: Publisher | None = None, emit: Callable[..., None] | None = None, seed: int = 0,
                 adapt: AdaptSection | None = None):
        if publisher is None:
            raise GateError("the gate needs a publisher to make versions live")
        self.registry = PolicyRegistry(registry) if isinstance(registry, str) else registry
        self.kind, self.config, self.publisher = kind, config or GateSection(), publisher
        self.emit, self.seed, self.adapt = plain_emit(emit), seed, adapt
        check_stages(self.config, kind.gives, kind.name)  # a bad stage list fails here, not at the first candidate
        if hasattr(kind, "check"):
            kind.check(self.config)
        self.started = time.time()
        self.mu = threading.Lock()  # state; short; taken inside `eval`, never around it
        self.eval = threading.Lock()  # one decision or live change at a time
        self._policies: dict[str, Policy] = {}
        self._models: OrderedDict[tuple[str, int], Any] = OrderedDict()

    # ---- the learner's side ------------------------------------------------------------------
    def bootstrap(self, policy_id: str, weights: Mapping[str, Any] | None = None,
                  files: Mapping[str, bytes] | None = None, metadata: Mapping[str, Any] | None = None) -> dict:
        """Make the starting model live (version 1) unless a version is live already (a resumed run:
        that one is re-announced to the publisher)."""
        with self.eval:
            p = self.policy(policy_id)
            live = p.live()
            if live is None:
                if weights is None or files is None:
                    raise GateError(f"policy {policy_id!r} has no live version and no starting model was given")
                cand = self._candidate(p, weights, files, metadata)
                return decide.first_version(p, cand)
            loaded = self.registry.load(policy_id, live, as_numpy=True)
            acc = p.accuracy(live, loaded)
            self.publisher.restore(policy_id, loaded.weights, live, self.kind.spec)
            first = self.registry.stages(policy_id)["live"]["history"][0]  # the run's starting model
            if p.initial_accuracy is None:
                p.initial_accuracy = self.registry.get(policy_id, first).metrics.get("heldout_accuracy", acc)
            p.records.point(live, acc, "resumed")
            self.emit("gate_resumed", policy_id=policy_id, version=live, heldout_accuracy=acc)
            return {"policy_id": policy_id, "decision": "resumed", "version": live, "heldout_accuracy": acc}

    def submit(self, policy_id: str, weights: Mapping[str, Any], files: Mapping[str, bytes] | None = None,
               metadata: Mapping[str, Any] | None = None, wait: bool = True) -> dict[str, Any]:
        """Decide on one candidate: `initial`, `promote`, `refuse`, `dropped`, or the name of the
        live-traffic stage now holding it.  `wait=False`: dropped at once while another is decided."""
        p = self.policy(policy_id)
        with self.mu:
            p.records.ticket += 1
            ticket = p.records.ticket
        if not self.eval.acquire(blocking=wait):
            return self._dropped(p, "another candidate is being judged")
        try:
            newest = p.records.ticket
            if wait and ticket != newest:
                return self._dropped(p, f"stale: candidate #{ticket} was superseded by #{newest} while waiting",
                                     candidate=ticket, newest=newest)
            busy = self._busy(p)
            if busy is not None:
                return self._dropped(p, busy)
            events = events_seen(metadata or {})
            if events is not None:
                p.records.events = events
            cand = self._candidate(p, weights, files or {}, metadata)
            fault = self.kind.fault(cand.model)
            if fault is not None:
                return decide.unservable(p, cand, f"unservable: {fault}")
            if cand.live is None:
                return decide.first_version(p, cand)
            return decide.judge(p, cand)
        finally:
            self.eval.release()

    def _candidate(self, p: Policy, weights: Mapping[str, Any], files: Mapping[str, bytes],
                   metadata: Mapping[str, Any] | None) -> Candidate:
        try:
            model = self.kind.load(weights, files)
        except Exception as exc:  # a learner bug: said in the events, and to the caller
            self.emit("gate_error", policy_id=p.policy_id, reason=str(exc))
            raise
        heldout = self.kind.heldout
        return Candidate(p.policy_id, dict(weights), dict(files), dict(metadata or {}), model,
                         correct=self.kind.correct(model, heldout) if heldout is not None else None, live=p.live())

    def _busy(self, p: Policy) -> str | None:
        """Why a candidate must wait now: a live-traffic stage's experiment (one past its time ends first)."""
        pending = p.pending
        if pending is None:
            return None
        verdict = pending.stage.poll()
        if verdict is not None:
            decide.settle(p, pending, verdict)
            return None
        return pending.stage.busy() or f"a {pending.stage.name} runs on live traffic; one experiment at a time"

    def _dropped(self, p: Policy, reason: str, **fields: Any) -> dict[str, Any]:
        p.records.count("dropped")
        self.emit("gate_dropped", policy_id=p.policy_id, **fields, reason=reason)
        return {"policy_id": p.policy_id, "decision": "dropped", "version": None, "reason": reason}

    # ---- live evidence -----------------------------------------------------------------------
    def evidence(self, policy_id: str, items: Sequence[Mapping[str, Any]]) -> dict[str, Any]:
        """Live evidence (gate/evidence.py's items): what each stage took, the drift decisions it
        raised, what the rollback guard did (`unservable`, and live's `window` check)."""
        p = self.policy(policy_id)
        read, refused = self._read(p, items)
        taken = {name: stage.feed(read) for name, stage in p.stages.items()}
        p.guard.feed(read)
        adapt = self._adapt(p, read)
        pending = p.pending
        verdict = pending.stage.poll() if pending is not None else None
        if verdict is not None:
            with self.eval:
                if p.pending is pending:
                    decide.settle(p, pending, verdict)
        return {"policy_id": policy_id, "items": len(read), "refused": refused, "taken": taken, "adapt": adapt,
                **p.guard.watch()}

    def _read(self, p: Policy, items: Sequence[Mapping[str, Any]]) -> tuple[list[Evidence], int]:
        read, refused = [], 0
        for item in items:
            try:
                ev = self.kind.read(item)
            except (KeyError, TypeError, ValueError) as exc:  # one bad item costs only itself
                refused += 1
                log.warning("gate %s: evidence refused (%s)", p.policy_id, exc)
                continue
            if ev is not None:
                read.append(ev)
                p.records.count(str(item.get("type")))
        return read, refused

    def _adapt(self, p: Policy, read: Sequence[Evidence]) -> list[dict[str, Any]]:
        if p.adaptation is None:
            return []
        if p.recent is not None:
            p.recent.add([ev.example for ev in read if ev.example is not None])
        pairs = [(ev.version, ev.score) for ev in read if ev.score is not None]
        inputs = [(ev.version, *ev.answered) for ev in read if ev.answered is not None]
        with self.mu:
            new = p.adaptation.observe(p.live_version, pairs, p.adaptation.events + len(pairs))
            new += p.adaptation.observe_inputs(p.live_version, inputs)
        for decision in new:
            self.emit("adapt", policy_id=p.policy_id, action=[a["action"] for a in decision["actions"]] or None,
                      **decision)
        return new

    # ---- an operator's side, the run's end ----------------------------------------------------
    def rollback(self, policy_id: str, to: int | None = None, reason: str = "manual") -> dict[str, Any]:
        """Make an older version live again (default: the previous one not already rolled back from)."""
        with self.eval:
            p = self.policy(policy_id)
            p.live()
            return p.roll_back(to, reason, "manual")

    def close(self, policy_id: str | None = None) -> None:
        """The run ends: an experiment on live traffic still undecided is refused, its stage cleared."""
        for p in ([self.policy(policy_id)] if policy_id is not None else list(self._policies.values())):
            with self.eval:
                if p.pending is not None:
                    p.end_pending(f"the run ended before the {p.pending.stage.name} decided")

    # ---- queries -----------------------------------------------------------------------------
    def summary(self, policy_id: str | None = None) -> dict[str, Any]:
        """JSON-ready: what is live, every decision, rollbacks, the curve, what each stage holds."""
        if policy_id is None and not self._policies:
            return {"policy_id": None, "live_version": None, "initial_heldout_accuracy": None,
                    "heldout_accuracy": None, **Records(self.started).summary()}
        p = self.policy(policy_id if policy_id is not None else next(iter(self._policies)))
        live, scored = p.live_version, p.scored()
        pending = p.pending
        return {"policy_id": p.policy_id, "live_version": live, "initial_heldout_accuracy": p.initial_accuracy,
                "heldout_accuracy": float(scored[live].mean()) if live in scored else None,
                **p.records.summary(), **p.guard.figures(),
                "in_flight": None if pending is None else {"stage": pending.stage.name,
                                                           "version": pending.candidate.version},
                "stages": {name: stage.figures() for name, stage in p.stages.items()}}

    def stage(self, policy_id: str, name: str) -> dict[str, Any] | None:
        """What stage `name` of the policy holds now (a live-traffic stage: its experiment; None: nothing)."""
        stage = self.policy(policy_id).stages.get(name)
        figures = stage.figures() if stage is not None else {}
        return figures or None

    def adaptation(self, policy_id: str) -> dict[str, Any] | None:
        """The newest adaptation decision that acted (None: none yet); the learner polls it."""
        p = self.policy(policy_id)
        with self.mu:
            return p.adaptation.latest() if p.adaptation is not None else None

    def group_accuracy(self, policy_id: str, version: int | None = None) -> dict[str, float]:
        """Held-out accuracy of a version (default: live) per group; {} without groups."""
        groups = self.kind.groups
        if groups is None:
            return {}
        p = self.policy(policy_id)
        version = version if version is not None else p.live_version
        correct = p.scored().get(version)
        if correct is None:  # not scored yet (rare: live versions are scored as they go live)
            with self.eval:
                version = version if version is not None else p.live()
                if version is None:
                    return {}
                correct = p.correct(version)
        return {str(g): float(correct[groups == g].mean()) for g in sorted(set(groups.tolist()))}

    # ---- what the policies share --------------------------------------------------------------
    def policy(self, policy_id: str) -> Policy:
        with self.mu:
            p = self._policies.get(policy_id)
            if p is not None:
                return p
            p = self._policies[policy_id] = Policy(policy_id, self, self.config, self.adapt)
        p.live()  # episodes and windows of the version live now count from the start
        return p

    def model(self, policy_id: str, version: int, loaded: LoadedPolicy | None = None) -> Any:
        """A stored version as the kind's model; the last few are kept (live and rollback targets recur)."""
        with self.mu:
            model = self._models.get((policy_id, version))
        if model is None:
            loaded = loaded or self.registry.load(policy_id, version, as_numpy=True)
            model = self.kind.load(loaded.weights, loaded.files)
            self.keep_model(policy_id, version, model)
        return model

    def keep_model(self, policy_id: str, version: int, model: Any) -> None:
        with self.mu:
            self._models[(policy_id, version)] = model
            self._models.move_to_end((policy_id, version))
            while len(self._models) > MODELS_KEPT:
                self._models.popitem(last=False)
