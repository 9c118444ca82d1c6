"""The publish gate's adaptive side, as the part of `PublishGate` that only `feedback.adapt` uses.

    observe         the joiner's verdicts feed the drift detector; the recent slice's rows arrive
    adaptation      the newest decision that acted (the online learner polls it)
    group_accuracy  a version's held-out accuracy per group (the continual-learning matrix)
    _on_recent      a candidate must not be worse than live on the recent slice
    _held, _refused_by_recent   the rollback guard: no rollback while a drift alarm holds, and
                    only to a version better than live on the recent slice

`PublishGate` (serving/gate.py) inherits these; they use its state, locks and registry.
"""

from __future__ import annotations

from dataclasses import replace
from typing import Any, Sequence

from core.models.classifier import ClassifierBundle, from_version
from serving.adaptation import FeedbackAdaptation
from serving.recent_slice import RecentSlice


class AdaptiveGate:
    def observe(self, policy_id: str, pairs: Sequence[tuple[int, float]], events: int,
                recent: Sequence[tuple[str, int]] = (),
                inputs: Sequence[tuple[int, float | None, int]] = ()) -> list[dict[str, Any]]:
        """Joined feedback as (predicting version, 1/0 or reward) pairs, `events` joined so far: the
        live version's values feed the drift detector; returns (and emits) new adaptation decisions.
        `recent`: labeled (text, label id) rows the learner never sees, for the recent slice;
        `inputs`: (version, novelty or None, predicted label id) of each answered request."""
        self._canary_feed(policy_id, pairs)
        self.shadow_rows(policy_id, ())  # a shadow past `max_s` ends even when none of its rows arrive
        if not self.adapt.enabled:
            return []
        with self._mu:
            st = self._state(policy_id)
            if st.adaptation is None:
                st.adaptation = FeedbackAdaptation(self.adapt)
                st.recent = RecentSlice(self.adapt.recent_size, self.adapt.recent_min)
            st.recent.add(recent)
            new = st.adaptation.observe(st.live_version, pairs, events)
            new += st.adaptation.observe_inputs(st.live_version, inputs)
        for decision in new:
            self._emit("adapt", policy_id=policy_id, action=[a["action"] for a in decision["actions"]] or None,
                       **decision)
        return new

    def adaptation(self, policy_id: str) -> dict[str, Any] | None:
        """The newest adaptation decision that acted (None: none yet); the learner polls it."""
        with self._mu:
            st = self._state(policy_id)
            return st.adaptation.latest() if st.adaptation is not None else None

    def group_accuracy(self, policy_id: str, version: int | None = None) -> dict[str, float]:
        """Held-out accuracy of a version (default: live) per group; {} without groups."""
        if self.groups is None:
            return {}
        with self._mu:
            st = self._state(policy_id)
            version = version if version is not None else st.live_version
            correct = st.correct.get(version)
        if correct is None:  # not scored yet (rare: live versions are scored as they go live)
            with self._eval:
                version = version if version is not None else self._refresh_live(policy_id, st)
                if version is None:
                    return {}
                self._accuracy(policy_id, st, version)
                correct = st.correct[version]
        return {str(g): float(correct[self.groups == g].mean()) for g in sorted(set(self.groups.tolist()))}

    def _on_recent(self, policy_id: str, st: Any, live: int, candidate: ClassifierBundle, result):
        """The recent slice's verdict as well: a candidate worse than live on the newest feedback is
        refused however it does on the fixed set (which then only guards against forgetting)."""
        vs = st.recent.compare(candidate, self._bundle(policy_id, live), self.config, self.seed)
        evidence = {k: getattr(vs, k) for k in ("decision", "candidate_accuracy", "live_accuracy", "diff", "p_value",
                                                "n", "wins", "losses")}
        if vs.decision == "refuse":
            result = replace(result, decision="refuse",
                             reason=f"on the recent slice ({vs.n} rows of the newest feedback): {vs.reason}")
        return result, evidence

    def _bundle(self, policy_id: str, version: int) -> ClassifierBundle:
        """A stored version as a model (the last few kept: live and rollback targets recur)."""
        key = (policy_id, version)
        if key not in self._bundles:
            loaded = self.registry.load(policy_id, version, as_numpy=True)
            self._bundles[key] = from_version(loaded.weights, loaded.files)
            while len(self._bundles) > 3:
                self._bundles.pop(next(iter(self._bundles)))
        return self._bundles[key]

    # ---- the rollback guard's adaptive checks (each fills `out` and returns True to stop a rollback) ----
    def _held(self, policy_id: str, st: Any, version: int, out: dict, why: str) -> bool:
        """A drift alarm less than a cooldown ago: live's drop on feedback is the data changing."""
        held = st.adaptation.held() if st.adaptation is not None else None
        if held is None:
            return False
        out.update(rollback=False, reason=f"{why}; held: drift alarm #{held['id']} at feedback event "
                                          f"{held['events']} says the data changed, not the model")
        if held["id"] not in st.held_reported:
            st.held_reported.add(held["id"])
            self._emit("rollback_held", policy_id=policy_id, version=version, alarm=held["id"], reason=out["reason"])
        return True

    def _refused_by_recent(self, policy_id: str, st: Any, version: int, target: int, out: dict, why: str) -> bool:
        """A rollback goes only to a version better than live on the recent slice (call under _eval)."""
        if st.recent is None or not st.recent.ready():
            return False
        better, target_acc, live_acc = st.recent.better_cached(
            (version, target), lambda: self._bundle(policy_id, target), lambda: self._bundle(policy_id, version))
        if better:
            return False
        out.update(rollback=False, reason=f"{why}; v{target} is no better than live on the "
                                          f"recent feedback ({target_acc:.3f} vs {live_acc:.3f})")
        if (version, target) not in st.recent_refused:
            st.recent_refused.add((version, target))
            self._emit("rollback_refused", policy_id=policy_id, version=version, target=target,
                       target_recent_accuracy=target_acc, live_recent_accuracy=live_acc, reason=out["reason"])
        return True
