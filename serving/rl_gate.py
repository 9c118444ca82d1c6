"""The RL loop's publish gate: a learner version goes live on evidence from `/act` episodes.

    learner publish(policy_id, weights, meta, spec)  (the same call as PolicyPublisher's)
        no live version yet            -> live at once ("initial")
        a canary is running            -> dropped (one experiment on the traffic at a time)
        ope    (rl.gate.stages)        -> per-decision IS of the candidate's serving policy on
                                          live's logged episodes (serving/rl_ope.py): refuse on
                                          evidence; inconclusive (too few effective episodes)
                                          passes to the next stage and says so
        canary                         -> stored; registry stage `canary` points at it; Serve
                                          replicas answer `fraction` of client keys with it
    /act client episode(...)          -> live's episodes feed the ope slice; during a canary each
                                          arm's episode return (scaled to [0, 1]) feeds the
                                          sequential test (core/stats/sequential.py) until it decides
        promote -> live on every subscriber (registry + publisher.restore); abort -> cleared

    replica unservable(version, reason)  -> a version whose weights or Q-values are not finite:
                                          a canary of it aborts; live rolls back to the version
                                          before it (registry + publisher.restore), `rollback` event
A candidate that cannot answer (QPolicy.fault: a non-finite weight, or Q-values that overflow on
an all-zero observation) is refused before any stage, and not stored.

Each stage's verdict and evidence go into the registry lineage (`gate.stages`)
and a `gate_decision` event; the canary also says `canary_started` and
`canary_ended`.  Plain logic; `serving/rl_gate_actor.py` is its Ray shell.
"""

from __future__ import annotations

import threading
import time
from collections import deque
from dataclasses import dataclass, field
from typing import Any, Callable, Mapping


from core.stats.exploration import ExplorationSection
from core.storage.registry import PolicyRegistry
from core.config.rl_gate import RLGateSection
from core.models.q import PolicySpec
from core.models.q_policy import QPolicy
from core.stats.sequential import CanaryTest
from serving.gate_publisher import as_publisher
from serving.rollback import GateError, promote_over, rollback_registry
from serving.rl_ope import Episode, judge_offpolicy, scaled

EmitFn = Callable[..., None]
CANARY = "canary"


@dataclass
class _Canary:
    version: int
    live: int
    test: CanaryTest
    weights: dict = field(repr=False)
    gate: dict = field(repr=False)
    started: float = field(default_factory=time.time)


class RLGate:
    def __init__(self, registry: PolicyRegistry | str, config: RLGateSection, spec: dict,
                 exploration: ExplorationSection, publisher: Any, return_range: tuple[float, float],
                 emit: EmitFn | None = None, seed: int = 0):
        self.registry = PolicyRegistry(registry) if isinstance(registry, str) else registry
        self.config, self.spec, self.exploration = config, dict(spec), exploration
        self.publisher = as_publisher(publisher)
        self.range, self.seed = (float(return_range[0]), float(return_range[1])), seed
        self._emit_fn = emit
        self.episodes: deque[Episode] = deque(maxlen=config.ope.episodes)  # live's, for the ope stage
        self.canary_run: _Canary | None = None
        self.counts = {"promoted": 0, "refused": 0, "dropped": 0, "aborted": 0, "episodes": 0, "unservable": 0}
        self.unservable_versions: set[int] = set()
        self.decisions: deque[dict] = deque(maxlen=50)
        self._mu = threading.Lock()  # episodes and the canary; short
        self._eval = threading.Lock()  # one candidate or live change at a time

    # ---- the learner's side ----------------------------------------------------------------
    def publish(self, policy_id: str, weights: Mapping[str, Any], metadata: Mapping[str, Any] | None = None,
                spec: dict | None = None, published_at: float | None = None) -> int | None:
        """A learner version: returns the version stored (live or on canary), or None (refused, dropped)."""
        meta = dict(metadata or {})
        if not self._eval.acquire(blocking=False):
            return self._dropped(policy_id, "another candidate is being judged")
        try:
            live = self._live(policy_id)
            fault = QPolicy(PolicySpec.from_dict(self.spec), weights).fault()
            if fault is not None:  # not stored: the registry keeps no version that cannot answer
                gate = {"decision": "refuse", "reason": f"unservable: {fault}", "stages": []}
                return self._record(policy_id, None, live, gate, "refused")
            if live is None:
                gate = {"decision": "initial", "reason": "first version of the policy", "stages": []}
                return self._go_live(policy_id, dict(weights), meta, gate, live)
            if self.canary_run is not None:
                return self._dropped(policy_id, f"a canary (v{self.canary_run.version}) is on live traffic; "
                                                "one experiment at a time")
            return self._judge(policy_id, dict(weights), meta, live)
        finally:
            self._eval.release()

    def _judge(self, policy_id: str, weights: dict, meta: dict, live: int) -> int | None:
        trail: list[dict] = []
        for stage in self.config.stages:
            if stage == "ope":
                with self._mu:
                    episodes = list(self.episodes)
                verdict = judge_offpolicy(weights, self.spec, episodes, self.exploration, self.config,
                                          self.range, self.seed)
                trail.append({"stage": "ope", **verdict})
                if verdict["decision"] == "refuse":
                    return self._refused(policy_id, weights, meta, live, trail, verdict["reason"])
            elif stage == "canary":
                return self._start_canary(policy_id, weights, meta, live, trail)
        reason = "; ".join(s["reason"] for s in trail) or "no stages"
        return self._go_live(policy_id, weights, meta, {"decision": "promote", "reason": reason, "stages": trail},
                             live)

    # ---- the clients' side -----------------------------------------------------------------
    def episode(self, policy_id: str, ep: Mapping[str, Any]) -> None:
        """A finished /act episode: version (None: several served it), obs, actions, propensities, rewards."""
        episode = Episode.of(ep)
        with self._mu:
            self.counts["episodes"] += 1
            canary = self.canary_run
            if canary is None and episode.version is not None and episode.version == self._live_cached:
                self.episodes.append(episode)
            if canary is None or episode.version not in (canary.version, canary.live):
                return
            if episode.version == canary.live:
                self.episodes.append(episode)  # still live's: the next candidate is judged on it too
            score = scaled(episode.ret, self.range)
            canary.test.add("candidate" if episode.version == canary.version else "live", score)
            decision, reason = canary.test.decision()
        if decision != "continue":
            with self._eval:
                if self.canary_run is canary:
                    self._finish_canary(policy_id, canary, decision, reason)

    # ---- the replicas' side ----------------------------------------------------------------
    def unservable(self, policy_id: str, version: int, reason: str) -> dict | None:
        """A replica cannot answer from `version` (its weights or Q-values are not finite): a canary
        of it aborts, a live one is rolled back to the version before it. Said once per version
        however many replicas report it; returns what was done (None when already known)."""
        with self._eval:
            if version in self.unservable_versions:
                return None
            self.unservable_versions.add(version)
            with self._mu:
                self.counts["unservable"] += 1
            said = f"v{version} is unservable: {reason}"
            self._emit("version_unservable", policy_id=policy_id, version=version, reason=reason)
            canary = self.canary_run
            if canary is not None and canary.version == version:
                self._finish_canary(policy_id, canary, "abort", said)
                return {"version": version, "decision": "abort", "reason": said}
            if self._live(policy_id) != version:
                return {"version": version, "decision": "none", "reason": f"{said}; it is neither live nor on canary"}
            return self._roll_back(policy_id, version, said)

    def _roll_back(self, policy_id: str, version: int, reason: str) -> dict:
        try:
            done = rollback_registry(self.registry, policy_id, reason=reason)
        except GateError as exc:
            self._emit("rollback_impossible", policy_id=policy_id, version=version, reason=f"{reason}; {exc}")
            return {"version": version, "decision": "none", "reason": f"{reason}; {exc}"}
        loaded = self.registry.load(policy_id, done["to"], as_numpy=True)
        self.publisher.restore(policy_id, loaded.weights, done["to"], self.spec)
        self._set_live(done["to"])
        record = {**done, "trigger": "unservable", "time": time.time()}
        with self._mu:
            self.decisions.append({"version": done["to"], "parent": version, "decision": "rollback",
                                   "reason": reason, "stages": [], "time": record["time"]})
        self._emit("rollback", **record)
        return {"version": version, "decision": "rollback", "reason": reason, "to": done["to"]}

    # ---- stages' ends ----------------------------------------------------------------------
    def _start_canary(self, policy_id: str, weights: dict, meta: dict, live: int, trail: list[dict]) -> int:
        c = self.config.canary
        reason = "; ".join([*(s["reason"] for s in trail), f"canary on {c.fraction:.0%} of clients"])
        gate = {"decision": "canary", "reason": reason, "stages": trail}
        version = self.registry.publish(policy_id, weights, {**meta, "parent_version": live, "gate": gate})
        test = CanaryTest(tolerance=self.config.tolerance, alpha=c.alpha, max_requests=c.max_episodes,
                          min_requests=c.min_episodes, n_opt=c.n_opt)
        with self._mu:
            self.canary_run = _Canary(version, live, test, weights, gate)
        self.registry.promote(policy_id, version, stage=CANARY)
        self._emit("canary_started", policy_id=policy_id, version=version, live=live, fraction=c.fraction)
        return version

    def _finish_canary(self, policy_id: str, canary: _Canary, decision: str, reason: str) -> None:
        evidence = {"stage": "canary", "decision": "promote" if decision == "promote" else "refuse", "reason": reason,
                    "duration_s": round(time.time() - canary.started, 1), "unit": "episode",
                    **canary.test.evidence()}
        gate = {**canary.gate, "decision": evidence["decision"], "reason": reason,
                "stages": [*canary.gate["stages"], evidence]}
        self.registry.update_metadata(policy_id, canary.version, gate=gate)
        self.registry.clear(policy_id, CANARY)
        with self._mu:
            self.canary_run = None
        self._emit("canary_ended", policy_id=policy_id, version=canary.version, **evidence)
        if evidence["decision"] == "promote" and self._live(policy_id) == canary.live \
                and promote_over(self.registry, policy_id, canary.version, canary.live):
            self.publisher.restore(policy_id, canary.weights, canary.version, self.spec)
            self._set_live(canary.version)
            self._record(policy_id, canary.version, canary.live, gate, "promoted")
        else:
            if evidence["decision"] == "promote":
                gate.update(decision="refuse", reason=f"{reason}; but live changed meanwhile")
                self.registry.update_metadata(policy_id, canary.version, gate=gate)
            self._record(policy_id, canary.version, canary.live, gate, "aborted")

    def _go_live(self, policy_id: str, weights: dict, meta: dict, gate: dict, live: int | None) -> int:
        version = self.publisher.publish(policy_id, weights, {**meta, "gate": gate}, self.spec, {})
        self._set_live(version)
        self._record(policy_id, version, live, gate, "promoted" if live is not None else None)
        return version

    def _refused(self, policy_id: str, weights: dict, meta: dict, live: int, trail: list[dict], reason: str) -> int:
        gate = {"decision": "refuse", "reason": reason, "stages": trail}
        version = self.registry.publish(policy_id, weights, {**meta, "parent_version": live, "gate": gate})
        self._record(policy_id, version, live, gate, "refused")
        return version

    def _dropped(self, policy_id: str, reason: str) -> None:
        with self._mu:
            self.counts["dropped"] += 1
        self._emit("gate_dropped", policy_id=policy_id, reason=reason)
        return None

    def _record(self, policy_id: str, version: int | None, live: int | None, gate: dict, count: str | None) -> None:
        record = {"version": version, "parent": live, "decision": gate["decision"], "reason": gate["reason"],
                  "stages": gate.get("stages", []), "time": time.time()}
        with self._mu:
            if count:
                self.counts[count] += 1
            self.decisions.append(record)
        self._emit("gate_decision", policy_id=policy_id, **record)

    # ---- live --------------------------------------------------------------------------------
    _live_cached: int | None = None

    def _live(self, policy_id: str) -> int | None:
        entry = self.registry.latest(policy_id, "live")
        self._set_live(entry.version if entry is not None else None)
        return self._live_cached

    def _set_live(self, version: int | None) -> None:
        with self._mu:
            if version != self._live_cached:
                self.episodes.clear()  # another policy served those: not live's behaviour any more
            self._live_cached = version

    def close(self, policy_id: str) -> None:
        """The run ends: a canary still undecided is ended (refused, the stage cleared), never left pointing."""
        with self._eval:
            canary = self.canary_run
            if canary is not None:
                said = canary.test.decision()[1]
                self._finish_canary(policy_id, canary, "abort", f"{said}; the run ended before the canary decided")

    # ---- queries -----------------------------------------------------------------------------
    def canary(self) -> dict | None:
        with self._mu:
            c = self.canary_run
            return None if c is None else {"version": c.version, "live": c.live, "started": c.started,
                                           **c.test.evidence()}

    def summary(self) -> dict:
        with self._mu:
            return {"live_version": self._live_cached, **self.counts, "canary": None if self.canary_run is None
                    else self.canary_run.version, "ope_episodes": len(self.episodes),
                    "last_decision": self.decisions[-1] if self.decisions else None}

    def _emit(self, kind: str, **fields: Any) -> None:
        if self._emit_fn is not None:
            self._emit_fn(kind, **fields)
