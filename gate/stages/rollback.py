"""The rollback guard: the stage that watches what is live, on every gate and every kind.

    prequential  each version's window over its newest feedback (`PrequentialWindows`): live rolls
                 back when its greedy accuracy there falls below what the held-out set measured by
                 more than `rollback_margin`; judged only on a window of at least `min_clients`
                 senders, no one sender counting beyond `max_client_share` of it.  Feedback with no
                 sender (no key, no client header) is one sender, "anonymous": however many people
                 send it, they count once toward `min_clients` and share one cap
        held     not while a drift alarm holds (`adapt`: the data changed, not the model)
        target   the live version before it that was not itself rolled back from; with `adapt`,
                 only one better than live on the recent slice
    unservable   a replica cannot answer from a version: a candidate on a live-traffic stage is
                 ended (refused), a live one rolled back to the version before it; once per version
"""

from __future__ import annotations

import math
from collections import deque
from typing import Any, Sequence

from core.stats.paired import prequential_check_counts
from gate.evidence import Evidence
from gate.pointer import GateError
from gate.stage import GUARD, Stage, register_stage

MAX_VERSIONS_TRACKED = 100  # prequential windows kept (newest versions)


class PrequentialWindows:
    def __init__(self, window: int, max_client_share: float = 1.0):
        self.window, self.max_client_share = window, max_client_share
        # version -> last `window` (value, weight, client): who sent each feedback, for the share cap
        self.scores: dict[int, deque[tuple[float, float, str | None]]] = {}

    def prequential(self) -> dict[int, tuple[float, int]]:
        """{policy_version: (correct, n)} over each version's last `window` feedbacks.

        correct / n is the version's accuracy as it would answer greedily, the figure the gate
        measured on the held-out set: 1/0 for labeled feedback (the label against the version's
        argmax), the reward for reward-only feedback.  With exploration the served answer is
        sometimes not the argmax; its reward then says nothing about the greedy answer, and the
        window is self-normalised over the rows served greedily, each weighted 1 / propensity.
        """
        out = {}
        for v, s in sorted(self.scores.items()):
            kept = self._capped(s)  # the mean over the capped rows; n stays the window's (is it full yet)
            weight = sum(w for _, w, _ in kept)
            if weight > 0:
                out[v] = (sum(x * w for x, w, _ in kept) / weight * len(s), len(s))
        return out

    def clients(self) -> dict[int, int]:
        """{policy_version: distinct feedback senders in its window}; unattributed rows (None) are
        one sender: nothing says they come from more than one."""
        return {v: len({c for _, _, c in s}) for v, s in sorted(self.scores.items())}

    def _capped(self, rows: deque) -> list[tuple[float, float, str | None]]:
        """The window with each sender's rows beyond `max_client_share` of it left out (its oldest):
        one client, however busy, moves the figure by at most its share; the unattributed rows too."""
        if self.max_client_share >= 1:
            return list(rows)
        cap = max(1, math.ceil(self.max_client_share * len(rows)))
        seen: dict[str | None, int] = {}
        kept = []
        for row in reversed(rows):
            seen[row[2]] = seen.get(row[2], 0) + 1
            if seen[row[2]] <= cap:
                kept.append(row)
        return kept[::-1]

    def add(self, version: int, value: float, weight: float, client: str | None = None) -> None:
        if version not in self.scores:
            self.scores[version] = deque(maxlen=self.window)
            for old in sorted(self.scores)[:-MAX_VERSIONS_TRACKED]:
                del self.scores[old]
        self.scores[version].append((value, weight, client))


@register_stage(GUARD)
class RollbackGuard(Stage):
    def __init__(self, policy: Any, settings: Any):
        super().__init__(policy, settings)
        cfg = policy.settings
        self.windows = PrequentialWindows(cfg.window, cfg.max_client_share)
        self.newest: int | None = None  # the version of the newest feedback fed, not yet judged
        self.unservable: dict[int, str] = {}  # versions a replica reported, with the first reason
        self.fresh: list[int] = []  # of those, not yet acted on
        self.no_target: set[int] = set()  # live versions whose impossible rollback was reported
        self.held_reported: set[int] = set()  # drift alarms a held rollback was reported for
        self.recent_refused: set[tuple[int, int]] = set()  # (live, target) rollbacks the recent slice refused

    def feed(self, evidence: Sequence[Evidence]) -> int:
        taken = 0
        with self.lock:
            for ev in evidence:
                if ev.window is not None and ev.version is not None:
                    self.windows.add(ev.version, *ev.window, ev.client)
                    self.newest, taken = ev.version, taken + 1
                if ev.unservable is not None and ev.version not in self.unservable:
                    self.unservable[ev.version] = ev.unservable
                    self.fresh.append(ev.version)
        return taken

    def watch(self) -> dict[str, Any]:
        """Act on what was fed: {"unservable": [what was done per version], "window": live's check}."""
        with self.lock:
            fresh, self.fresh = self.fresh, []
            newest, self.newest = self.newest, None
            window = self.windows.prequential().get(newest) if newest is not None else None
            clients = self.windows.clients().get(newest, 0)
        done = [self._unservable(v, self.unservable[v]) for v in fresh]
        return {"unservable": done, "window": None if window is None else self._window(newest, *window, clients)}

    def figures(self) -> dict[str, Any]:
        """Versions reported unservable; live's window: its greedy accuracy on the newest feedback."""
        live = self.policy.live_version
        with self.lock:
            window = self.windows.prequential().get(live)
            clients = self.windows.clients().get(live, 0)
            reported = len(self.unservable)
        return {"unservable": reported, "live_window": None if window is None else {
            "version": live, "correct": round(window[0], 3), "n": window[1], "clients": clients,
            "accuracy": round(window[0] / window[1], 4) if window[1] else None}}

    # ---- the prequential window -----------------------------------------------------------------
    def _window(self, version: int, correct: float, n: int, clients: int) -> dict[str, Any]:
        policy, cfg = self.policy, self.policy.settings
        out = {"policy_id": policy.policy_id, "version": version, "rollback": False}
        if clients < cfg.min_clients:
            return {**out, "reason": f"feedback from {clients} client(s); a rollback needs {cfg.min_clients}"}
        live = policy.live_version if policy.live_version == version else policy.live()
        if live != version:
            return {**out, "reason": f"v{version} is not live (live: v{live}); feedback ignored"}
        if version not in policy.scored():
            with policy.deciding():
                policy.correct(version)
        measured = policy.accuracy(version)
        if measured is None:  # a kind without a held-out set has nothing to compare with
            return {**out, "reason": "no held-out accuracy to compare with"}
        result = prequential_check_counts(correct, n, measured, cfg.window, cfg.rollback_margin)
        out.update(result.to_dict())
        if not result.rollback or self._held(version, out, result.reason):
            return out
        with policy.deciding():
            if policy.live() != version:
                return {**out, "rollback": False, "reason": f"v{version} was replaced meanwhile"}
            target = policy.rollback_target()
            if target is None:
                return self._impossible(version, out, f"{result.reason}; no earlier version to roll back to")
            if self._refused_by_recent(version, target, out, result.reason):
                return out
            done = policy.roll_back(target, result.reason, "prequential")
        return {**out, "rolled_back_to": done["to"]}

    def _held(self, version: int, out: dict, why: str) -> bool:
        """A drift alarm less than a cooldown ago: live's drop on feedback is the data changing."""
        adaptation = self.policy.adaptation
        held = adaptation.held() if adaptation is not None else None
        if held is None:
            return False
        out.update(rollback=False, reason=f"{why}; held: drift alarm #{held['id']} at feedback event "
                                          f"{held['events']} says the data changed, not the model")
        if held["id"] not in self.held_reported:
            self.held_reported.add(held["id"])
            self.policy.emit("rollback_held", policy_id=self.policy.policy_id, version=version, alarm=held["id"],
                             reason=out["reason"])
        return True

    def _refused_by_recent(self, version: int, target: int, out: dict, why: str) -> bool:
        """A rollback goes only to a version better than live on the recent slice (under deciding)."""
        policy, recent = self.policy, self.policy.recent
        if recent is None or not recent.ready():
            return False
        better, target_acc, live_acc = recent.better_cached((version, target), lambda: policy.model(target),
                                                           lambda: policy.model(version))
        if better:
            return False
        out.update(rollback=False, reason=f"{why}; v{target} is no better than live on the "
                                          f"recent feedback ({target_acc:.3f} vs {live_acc:.3f})")
        if (version, target) not in self.recent_refused:
            self.recent_refused.add((version, target))
            policy.emit("rollback_refused", policy_id=policy.policy_id, version=version, target=target,
                        target_recent_accuracy=target_acc, live_recent_accuracy=live_acc, reason=out["reason"])
        return True

    def _impossible(self, version: int, out: dict, reason: str) -> dict[str, Any]:
        out.update(rollback=False, reason=reason)
        if version not in self.no_target:
            self.no_target.add(version)
            self.policy.emit("rollback_impossible", policy_id=self.policy.policy_id, version=version, reason=reason)
        return out

    # ---- a version that cannot answer ---------------------------------------------------------------
    def _unservable(self, version: int, reason: str) -> dict[str, Any]:
        policy = self.policy
        said = f"v{version} is unservable: {reason}"
        policy.emit("version_unservable", policy_id=policy.policy_id, version=version, reason=reason)
        with policy.deciding():
            if policy.pending_version() == version:
                policy.end_pending(said)
                return {"version": version, "decision": "abort", "reason": said}
            if policy.live() != version:
                return {"version": version, "decision": "none", "reason": f"{said}; it is neither live nor a candidate on live traffic"}
            try:
                done = policy.roll_back(None, said, "unservable")
            except GateError as exc:
                policy.emit("rollback_impossible", policy_id=policy.policy_id, version=version,
                            reason=f"{said}; {exc}")
                return {"version": version, "decision": "none", "reason": f"{said}; {exc}"}
        return {"version": version, "decision": "rollback", "reason": said, "to": done["to"]}
