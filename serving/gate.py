"""The publish gate: a candidate classifier version goes live only if the held-out set says so.

    learner --submit(weights, files, metadata)--> PublishGate --promote--> PolicyPublisher.publish (store + live)
                                                     |        --refuse---> registry.publish (stored, never live)
    feedback join --check_window(correct, n)-------->+ ------rollback----> registry.rollback + publisher.restore

`PublishGate` is a plain class (tests run it without Ray); `GateActor`
(`serving/gate_actor.py`) is its thin Ray shell.  The statistics live in `core.stats.paired` (read its docstring
for the decision rule).  Every decision is stored in the registry (metadata
`gate`, `metrics.heldout_accuracy`), so the lineage shows refusals too, and is
reported through `emit(kind, **fields)`.

Candidates are evaluated one at a time.  While one is being scored, newer ones
queue; when the gate gets to them, only the newest queued candidate of a
policy is evaluated and the older ones are answered `dropped` (never stored):
scoring a version that is already superseded would only delay the one that
matters.

Rollback marks the version it leaves (`info.rolled_back`), so a later
automatic rollback never goes "back" to a version that was already rolled
back from (`PolicyRegistry.rollback`'s default would).
"""

from __future__ import annotations

import logging
import threading
import time
from collections import deque
from dataclasses import dataclass, field, replace
from typing import Any, Callable, Mapping, Sequence

import numpy as np

from core.config.adapt import AdaptSection
from core.config.feedback import GateSection
from core.stats.paired import compare, prequential_check, prequential_check_counts
from core.storage.registry import LoadedPolicy, PolicyRegistry
from core.models.classifier import ClassifierBundle, ClassifierError, from_version
from serving.adaptation import FeedbackAdaptation
from serving.gate_adaptive import AdaptiveGate
from serving.gate_canary import CanaryGate
from serving.gate_lineage import events_seen, with_gate
from serving.gate_ope import OffPolicyGate
from serving.gate_publisher import as_publisher
from serving.gate_shadow import ShadowGate
from serving.ope_slice import OPESlice
from serving.recent_slice import RecentSlice
from serving.rollback import GateError, rollback_registry, rollback_target

log = logging.getLogger(__name__)

EmitFn = Callable[..., None]  # emit(kind, **fields)
DEFAULT_SPEC = {"kind": "text_classifier"}
GATE_ACTOR_NAME = "evolve-gate"


def heldout_correct(bundle: ClassifierBundle, texts: Sequence[str], labels: np.ndarray, batch: int = 128) -> np.ndarray:
    """[N] bool: did the model's argmax match the label."""
    return bundle.predict_proba(list(texts), batch=batch).argmax(-1) == labels


# ---- the gate ----------------------------------------------------------------------------------
@dataclass
class _PolicyState:
    live_version: int | None = None
    initial_accuracy: float | None = None
    correct: dict[int, np.ndarray] = field(default_factory=dict)  # held-out correctness per version
    flags: deque = field(default_factory=deque)  # live version's correct flags on incoming feedback
    decisions: list[dict] = field(default_factory=list)
    rollbacks: list[dict] = field(default_factory=list)
    curve: list[dict] = field(default_factory=list)
    dropped: int = 0
    ticket: int = 0  # newest submitted candidate
    events: int | None = None  # newest `data_range.events` a learner reported
    no_target_reported: set[int] = field(default_factory=set)
    ever_live: list[int] = field(default_factory=list)  # versions that went live and were not rolled back from
    adaptation: FeedbackAdaptation | None = None  # with adapt.enabled
    held_reported: set[int] = field(default_factory=set)  # adaptation decisions a held rollback was reported for
    recent: RecentSlice | None = None  # with adapt.enabled: feedback held out of training
    recent_refused: set[tuple[int, int]] = field(default_factory=set)  # (live, target) rollbacks the slice refused
    offpolicy: OPESlice | None = None  # with the `ope` stage: held-back live feedback
    canary: Any = None  # serving/gate_canary.py `Canary`: the candidate on live traffic
    shadow: Any = None  # serving/gate_shadow.py `Shadow`: the candidate answering beside live


class PublishGate(AdaptiveGate, OffPolicyGate, ShadowGate, CanaryGate):
    """Scores candidates on the fixed held-out set and decides which go live.

    registry   the policy registry (or its URI); the source of truth for what is live
    heldout    [(text, label id)]: `core.data.labeled.load_labeled(...).heldout`
    config     `GateSection` (test, tolerance, alpha, min_gain, bootstrap_samples, window, rollback_margin)
    publisher  `Publisher` (fake in tests) or a `PolicyPublisher` actor handle
    emit       emit(kind, **fields) for every decision; the wiring writes them to events.jsonl
    adapt      `AdaptSection`: with `enabled`, a drift detector on live's accuracy on feedback
               (`observe`) whose alarms boost the learner and hold the rollback guard
    groups     per held-out row, its group (domain): `group_accuracy` and the decisions' events
    """

    def __init__(self, registry: PolicyRegistry | str, heldout: Sequence[tuple[str, int]],
                 config: GateSection | None = None, publisher: Any = None, emit: EmitFn | None = None,
                 spec: dict | None = None, seed: int = 0, score_batch: int = 128,
                 adapt: AdaptSection | None = None, groups: Sequence[str] | None = None):
        if not heldout:
            raise GateError("the gate needs a non-empty held-out set")
        if publisher is None:
            raise GateError("the gate needs a publisher to make versions live")
        self.registry = PolicyRegistry(registry) if isinstance(registry, str) else registry
        self.texts = [t for t, _ in heldout]
        self.labels = np.asarray([y for _, y in heldout], dtype=np.int64)
        self.config = config or GateSection()
        self.publisher = as_publisher(publisher)
        self._emit_fn = emit
        self.spec = dict(spec or DEFAULT_SPEC)
        self.seed, self.score_batch = seed, score_batch
        self.adapt = adapt or AdaptSection()
        self.groups = np.asarray(groups) if groups is not None else None
        if self.groups is not None and len(self.groups) != len(self.texts):
            raise GateError("groups must name one group per held-out row")
        self.started = time.time()
        self._states: dict[str, _PolicyState] = {}
        self._bundles: dict[tuple[str, int], ClassifierBundle] = {}
        self._mu = threading.Lock()  # state; short; always taken inside _eval, never around it
        self._eval = threading.Lock()  # one evaluation / live change at a time

    # ---- public API ------------------------------------------------------------------------
    def bootstrap(self, policy_id: str, bundle: ClassifierBundle | None = None, *,
                  weights: Mapping[str, Any] | None = None, files: Mapping[str, bytes] | None = None,
                  metadata: Mapping[str, Any] | None = None) -> dict[str, Any]:
        """Make the starting model live (version 1) unless a version is live already (a resumed
        run: that one is re-announced to the publisher).  Records `initial_heldout_accuracy`."""
        if bundle is not None:
            weights, files = {k: v.numpy() for k, v in bundle.weights().items()}, bundle.files()
        with self._eval:
            st = self._state(policy_id)
            live = self._refresh_live(policy_id, st)
            if live is None:
                if weights is None or files is None:
                    raise GateError(f"policy {policy_id!r} has no live version and no starting model was given")
                correct = heldout_correct(from_version(weights, files), self.texts, self.labels, self.score_batch)
                return self._first_version(policy_id, st, dict(weights), dict(files), dict(metadata or {}), correct)
            loaded = self.registry.load(policy_id, live, as_numpy=True)
            acc = self._accuracy(policy_id, st, live, loaded)
            self.publisher.restore(policy_id, loaded.weights, live, self.spec)
            first = self.registry.stages(policy_id)["live"]["history"][0]  # the run's starting model
            initial = self.registry.get(policy_id, first).metrics.get("heldout_accuracy", acc)
            with self._mu:
                if st.initial_accuracy is None:
                    st.initial_accuracy = initial
                self._curve(st, live, acc, "resumed")
            self._emit("gate_resumed", policy_id=policy_id, version=live, heldout_accuracy=acc)
            return {"policy_id": policy_id, "decision": "resumed", "version": live, "heldout_accuracy": acc}

    def submit(self, policy_id: str, weights: Mapping[str, Any], files: Mapping[str, bytes],
               metadata: Mapping[str, Any] | None = None) -> dict[str, Any]:
        """Decide on one candidate; returns the decision (`initial`, `promote`, `refuse`, `dropped`)."""
        with self._mu:
            st = self._state(policy_id)
            st.ticket += 1
            ticket = st.ticket
        with self._eval:
            with self._mu:
                newest = st.ticket
                if ticket != newest:
                    st.dropped += 1
            if ticket != newest:
                reason = f"stale: candidate #{ticket} was superseded by #{newest} while waiting"
                self._emit("gate_dropped", policy_id=policy_id, candidate=ticket, newest=newest, reason=reason)
                return {"policy_id": policy_id, "decision": "dropped", "version": None, "reason": reason}
            return self._evaluate(policy_id, st, dict(weights), dict(files), dict(metadata or {}))

    def rollback(self, policy_id: str, to: int | None = None, reason: str = "manual") -> dict[str, Any]:
        """Make an older version live again (default: the previous one not already rolled back from)."""
        with self._eval:
            st = self._state(policy_id)
            self._refresh_live(policy_id, st)
            return self._rollback(policy_id, st, to, reason, trigger="manual")

    def check_prequential(self, policy_id: str, version: int, correct_flags: Sequence[bool]) -> dict[str, Any]:
        """Add the live version's correct flags on new feedback (incremental: send each batch once);
        rolls back when its windowed accuracy falls below the held-out accuracy the gate measured
        minus `rollback_margin`.  Flags of a version that is no longer live are ignored."""
        return self._prequential(policy_id, version, flags=correct_flags)

    def check_window(self, policy_id: str, version: int, correct: float, n: int,
                     clients: int | None = None) -> dict[str, Any]:
        """The same check on counts the caller keeps over the version's last `n <= window` feedback
        events (`serving/join.py` `prequential()` gives {version: (correct, n)}); not incremental.

        `clients`: distinct senders in that window. Fewer than `gate.min_clients` never roll back:
        one client (or a few), however many labels they send, cannot move the live version."""
        if clients is not None and clients < self.config.min_clients:
            return {"policy_id": policy_id, "version": version, "rollback": False,
                    "reason": f"feedback from {clients} client(s); a rollback needs {self.config.min_clients}"}
        return self._prequential(policy_id, version, counts=(float(correct), int(n)))

    def _prequential(self, policy_id: str, version: int, flags: Sequence[bool] | None = None,
                     counts: tuple[float, int] | None = None) -> dict[str, Any]:
        cfg = self.config
        with self._mu:
            st = self._state(policy_id)
            live = st.live_version
        if live != version:  # the CLI may have moved the pointer; a file read, no need to wait for _eval
            live = self._refresh_live(policy_id, st)
        if live != version:
            return {"policy_id": policy_id, "version": version, "rollback": False,
                    "reason": f"v{version} is not live (live: v{live}); feedback ignored"}
        if version not in st.correct:
            with self._eval:
                self._accuracy(policy_id, st, version)
        measured = float(st.correct[version].mean())
        if counts is None:
            with self._mu:
                st.flags.extend(bool(f) for f in flags or ())
                while len(st.flags) > cfg.window:
                    st.flags.popleft()
                kept = list(st.flags)
            result = prequential_check(kept, measured, cfg.window, cfg.rollback_margin)
        else:
            correct, n = counts
            if n > cfg.window:  # a caller keeping a longer window: judge its mean over `window` events
                correct, n = correct * cfg.window / n, cfg.window
            result = prequential_check_counts(correct, n, measured, cfg.window, cfg.rollback_margin)
        out = {"policy_id": policy_id, "version": version, **result.to_dict()}
        if not result.rollback:
            return out
        if self._held(policy_id, st, version, out, result.reason):
            return out
        with self._eval:
            if self._refresh_live(policy_id, st) != version:
                return {**out, "rollback": False, "reason": f"v{version} was replaced meanwhile"}
            target = rollback_target(self.registry, policy_id)
            if target is not None and self._refused_by_recent(policy_id, st, version, target, out, result.reason):
                return out
            if target is None:
                out.update(rollback=False, reason=f"{result.reason}; no earlier version to roll back to")
                if version not in st.no_target_reported:
                    st.no_target_reported.add(version)
                    self._emit("rollback_impossible", policy_id=policy_id, version=version, reason=out["reason"])
                return out
            done = self._rollback(policy_id, st, target, result.reason, trigger="prequential")
        return {**out, "rolled_back_to": done["to"]}

    def summary(self, policy_id: str | None = None) -> dict[str, Any]:
        """JSON-ready: initial and live held-out accuracy, every decision, rollbacks, the curve."""
        with self._mu:
            if policy_id is None:
                if not self._states:
                    return {"policy_id": None, "live_version": None, "initial_heldout_accuracy": None,
                            "heldout_accuracy": None, "promotions": [], "promoted": 0, "refusals": 0,
                            "dropped": 0, "rollbacks": [], "curve": []}
                policy_id = next(iter(self._states))
            st = self._state(policy_id)
            live = st.live_version
            return {
                "policy_id": policy_id,
                "live_version": live,
                "initial_heldout_accuracy": st.initial_accuracy,
                "heldout_accuracy": float(st.correct[live].mean()) if live in st.correct else None,
                "promotions": [dict(d) for d in st.decisions],
                "promoted": sum(d["decision"] in ("promote", "initial") for d in st.decisions),
                "refusals": sum(d["decision"] == "refuse" for d in st.decisions),
                "dropped": st.dropped,
                "rollbacks": [dict(r) for r in st.rollbacks],
                "curve": [dict(c) for c in st.curve],
            }

    # ---- internals (called with _eval held) -------------------------------------------------
    def _evaluate(self, policy_id: str, st: _PolicyState, weights: dict, files: dict, metadata: dict) -> dict[str, Any]:
        busy = self._shadow_busy(policy_id, st) or self._canary_busy(policy_id, st)
        if busy is not None:
            return busy
        t0 = time.perf_counter()
        events = events_seen(metadata)
        if events is not None:
            st.events = events
        try:
            candidate = from_version(weights, files)
        except ClassifierError as exc:  # a learner bug: say so in the events, and to the caller
            self._emit("gate_error", policy_id=policy_id, reason=str(exc))
            raise
        correct = heldout_correct(candidate, self.texts, self.labels, self.score_batch)
        live = self._refresh_live(policy_id, st)
        if live is None:
            return self._first_version(policy_id, st, weights, files, metadata, correct)
        live_acc = self._accuracy(policy_id, st, live)
        cfg = self.config
        result = compare(correct, st.correct[live], test=cfg.test, tolerance=cfg.tolerance, alpha=cfg.alpha,
                         min_gain=cfg.min_gain, bootstrap_samples=cfg.bootstrap_samples, seed=self.seed)
        if result.decision == "promote" and cfg.drift_guard:
            result = self._against_best(st, live, correct, result)
        recent = None
        if result.decision == "promote" and st.recent is not None and st.recent.ready():
            result, recent = self._on_recent(policy_id, st, live, candidate, result)
        result, stages = self._staged(policy_id, st, live, candidate, result)
        eval_s = time.perf_counter() - t0
        gate = {**result.to_dict(), "compared_with": live, "decided_at": time.time(), "eval_s": eval_s,
                "stages": stages, **({"recent": recent} if recent else {})}
        meta = with_gate(metadata, live, result.candidate_accuracy, live_acc, gate)
        decision, reason = result.decision, result.reason
        if decision == "promote" and "shadow" in cfg.stages:
            version = self._start_shadow(policy_id, st, live, weights, files, meta, result.candidate_accuracy, live_acc)
            decision, reason = "shadow", f"{reason}; shadow on {cfg.shadow.fraction:.0%} of requests"
        elif decision == "promote" and "canary" in cfg.stages:
            version = self._start_canary(policy_id, st, live, weights, files, meta, result.candidate_accuracy, live_acc)
            decision, reason = "canary", f"{reason}; canary on {cfg.canary.fraction:.0%} of traffic"
        elif decision == "promote":
            version = int(self.publisher.publish(policy_id, weights, meta, self.spec, files))
            self._went_live(st, version)
        else:
            version = self.registry.publish(policy_id, weights, meta, files=files)  # stored, never promoted
        with self._mu:
            st.correct[version] = correct
        return self._record(policy_id, st, version, live, decision, reason,
                            result.candidate_accuracy, live_acc, lineage_parent=meta["parent_version"], gate=gate)

    def _against_best(self, st: _PolicyState, live: int, correct: np.ndarray, result):
        """Drift guard: each step may lose up to `tolerance` to live, so a chain of them can slide far
        below the best version the loop had.  Test the candidate against that version too (the
        paired test only: the point-estimate rule against a stale best would freeze the loop)."""
        with self._mu:
            known = [v for v in st.ever_live if v != live and v in st.correct]
            best = max(known, key=lambda v: float(st.correct[v].mean()), default=None)
            best_correct = st.correct[best] if best is not None else None
        if best is None or best_correct.mean() <= st.correct[live].mean():
            return result
        cfg = self.config
        vs = compare(correct, best_correct, test=cfg.test, tolerance=cfg.tolerance, alpha=cfg.alpha,
                     bootstrap_samples=cfg.bootstrap_samples, seed=self.seed)
        if vs.p_value is None or vs.p_value >= cfg.alpha:
            return result
        reason = (f"drifted: worse than v{best} (the best version live so far, {vs.live_accuracy:.3f}) by more than "
                  f"{cfg.tolerance:.3f}: diff {vs.diff:+.4f} ({vs.wins} wins, {vs.losses} losses of {vs.n}), "
                  f"p={vs.p_value:.3g} < alpha={cfg.alpha}")
        return replace(result, decision="refuse", reason=reason)

    def _first_version(self, policy_id: str, st: _PolicyState, weights: dict, files: dict, metadata: dict,
                       correct: np.ndarray) -> dict[str, Any]:
        acc = float(correct.mean())
        reason = "first version: nothing live to compare with"
        gate = {"decision": "initial", "test": "none", "reason": reason, "n": int(correct.size),
                "candidate_accuracy": acc, "decided_at": time.time()}
        meta = with_gate(metadata, None, acc, None, gate)
        version = int(self.publisher.publish(policy_id, weights, meta, self.spec, files))
        with self._mu:
            st.correct[version] = correct
            st.initial_accuracy = acc
        self._went_live(st, version)
        return self._record(policy_id, st, version, None, "initial", reason, acc, None,
                            lineage_parent=meta.get("parent_version"), gate=gate)

    def _record(self, policy_id, st, version, parent, decision, reason, acc, parent_acc, lineage_parent, gate) -> dict:
        """`parent` is the live version the candidate was judged against (and replaces when promoted);
        `lineage_parent` what the registry records (the learner's starting version when it says so)."""
        record = {"version": version, "parent": parent, "heldout_accuracy": acc, "parent_heldout_accuracy": parent_acc,
                  "decision": decision, "reason": reason, "lineage_parent": lineage_parent, "events": st.events,
                  "time": time.time() - self.started}
        with self._mu:
            st.decisions.append(record)
            if decision in ("promote", "initial"):
                self._curve(st, version, acc, decision)
        extra = {k: gate.get(k) for k in ("test", "diff", "p_value", "ci", "wins", "losses", "n", "eval_s", "stages")}
        if self.groups is not None and version in st.correct:
            correct = st.correct[version]
            extra["group_accuracy"] = {str(g): float(correct[self.groups == g].mean())
                                       for g in sorted(set(self.groups.tolist()))}
        self._emit("gate_decision", policy_id=policy_id, **record, **extra)
        return {"policy_id": policy_id, **record, "live_version": st.live_version,
                "gate": {k: v for k, v in gate.items() if k != "decided_at"}}

    def _rollback(self, policy_id: str, st: _PolicyState, to: int | None, reason: str, trigger: str) -> dict:
        done = rollback_registry(self.registry, policy_id, to=to, reason=reason)
        with self._mu:  # a version rolled back from is nobody's benchmark
            st.ever_live = [v for v in st.ever_live if v != done["from"]]
        loaded = self.registry.load(policy_id, done["to"], as_numpy=True)
        self.publisher.restore(policy_id, loaded.weights, done["to"], self.spec)
        acc = self._accuracy(policy_id, st, done["to"], loaded)
        self._went_live(st, done["to"])
        record = {**done, "trigger": trigger, "heldout_accuracy": acc, "events": st.events,
                  "time": time.time() - self.started}
        with self._mu:
            st.rollbacks.append(record)
            self._curve(st, done["to"], acc, "rollback")
        self._emit("rollback", **record)
        return record

    def _accuracy(self, policy_id: str, st: _PolicyState, version: int, loaded: LoadedPolicy | None = None) -> float:
        """Held-out accuracy of a stored version; its correctness vector is scored once and cached."""
        if version not in st.correct:
            loaded = loaded or self.registry.load(policy_id, version, as_numpy=True)
            correct = heldout_correct(from_version(loaded.weights, loaded.files), self.texts, self.labels,
                                      self.score_batch)
            with self._mu:
                st.correct[version] = correct
        return float(st.correct[version].mean())

    def _refresh_live(self, policy_id: str, st: _PolicyState) -> int | None:
        """The registry says what is live (the CLI may move it); a change resets the feedback window."""
        live = (self.registry.stages(policy_id).get("live") or {}).get("version")
        if live != st.live_version:
            self._went_live(st, live)
        return live

    def _went_live(self, st: _PolicyState, version: int | None) -> None:
        with self._mu:
            st.live_version = version
            st.flags.clear()
            if version is not None and version not in st.ever_live:
                st.ever_live.append(version)

    def _curve(self, st: _PolicyState, version: int, acc: float, cause: str) -> None:
        st.curve.append({"version": version, "heldout_accuracy": acc, "events": st.events, "cause": cause,
                         "time": time.time() - self.started})

    def _state(self, policy_id: str) -> _PolicyState:
        st = self._states.get(policy_id)
        if st is None:
            st = self._states[policy_id] = _PolicyState()
        return st

    def _emit(self, kind: str, **fields: Any) -> None:
        if self._emit_fn is None:
            return
        try:
            self._emit_fn(kind, **fields)
        except Exception:  # a broken event sink must not take a decision down with it
            log.exception("gate: emitting %s failed", kind)
