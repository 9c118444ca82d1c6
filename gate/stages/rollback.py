"""The rollback guard: the stage that watches what is live, on every gate and every kind.

    window       each version's newest `window` feedbacks (`PrequentialWindows`): its greedy accuracy
                 there (the figure the held-out set measures), and the labeled rows among them;
                 judged only on a window of at least `min_clients` senders, no one sender counting
                 beyond `max_client_share` of it.  Feedback with no sender (no key, no client header)
                 is one sender, "anonymous": however many people send it, they count once toward
                 `min_clients` and share one cap
    paired test  once live's window holds `rollback_min_rows` labeled rows (at most `window`), the
                 version before it (the target: the newest earlier live version not itself rolled
                 back from) answers the same rows, each scored once (`EarlierAnswers`); live rolls
                 back only when the target is better on them by more than `rollback_margin` at
                 significance `alpha` (the gate's paired test, core/stats/paired.py), whatever the
                 drift detectors say
    world change both versions fell on those rows by more than `rollback_margin` below their
                 held-out accuracy and the target is no better: the data changed, not the model.
                 No rollback; a `world_changed` event, once until live's rows recover
    unservable   a replica cannot answer from a version: a candidate on a live-traffic stage is
                 ended (refused), a live one rolled back to the version before it; once per version

A kind whose feedback carries no labels (a Q-policy's episodes, a generator's ratings) gives the
guard no rows to pair, so only an unservable version rolls back there.
"""

from __future__ import annotations

import itertools
import math
from collections import deque
from typing import Any, Callable, Sequence

import numpy as np

from core.stats.paired import GateResult, compare
from gate.evidence import Evidence
from gate.pointer import GateError
from gate.stage import GUARD, Stage, register_stage

MAX_VERSIONS_TRACKED = 100  # prequential windows kept (newest versions)
Row = tuple[float, float, "str | None", Any, int]  # value, weight, client, (input, label) or None, row id


class PrequentialWindows:
    def __init__(self, window: int, max_client_share: float = 1.0):
        self.window, self.max_client_share = window, max_client_share
        # version -> its last `window` rows: who sent each (the share cap), the labeled example if any
        self.scores: dict[int, deque[Row]] = {}
        self._ids = itertools.count()

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
            weight = sum(r[1] for r in kept)
            if weight > 0:
                out[v] = (sum(r[0] * r[1] for r in kept) / weight * len(s), len(s))
        return out

    def clients(self) -> dict[int, int]:
        """{policy_version: distinct feedback senders in its window}; unattributed rows (None) are
        one sender: nothing says they come from more than one."""
        return {v: len({r[2] for r in s}) for v, s in sorted(self.scores.items())}

    def labeled(self, version: int) -> list[tuple[int, Any, bool]]:
        """(row id, (input, label), the version answered it right) for the labeled rows of its
        window, capped as `prequential` is: the rows an earlier version is paired with it on."""
        rows = self.scores.get(version)
        if not rows:
            return []
        return [(r[4], r[3], r[0] >= 0.5) for r in self._capped(rows) if r[3] is not None and r[1] > 0]

    def _capped(self, rows: deque) -> list[Row]:
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

    def add(self, version: int, value: float, weight: float, client: str | None = None, example: Any = None) -> None:
        if version not in self.scores:
            self.scores[version] = deque(maxlen=self.window)
            for old in sorted(self.scores)[:-MAX_VERSIONS_TRACKED]:
                del self.scores[old]
        self.scores[version].append((value, weight, client, example, next(self._ids)))


class EarlierAnswers:
    """An earlier version's right / wrong on live's window rows, each row scored once."""

    def __init__(self) -> None:
        self.version: int | None = None
        self.right: dict[int, bool] = {}

    def on(self, version: int, rows: Sequence[tuple[int, Any, bool]], model: Callable[[], Any],
           correct: Callable[[Any, list], np.ndarray]) -> np.ndarray:
        if version != self.version:
            self.version, self.right = version, {}
        missing = [(i, example) for i, example, _ in rows if i not in self.right]
        if missing:
            flags = correct(model(), [example for _, example in missing])
            self.right.update(zip((i for i, _ in missing), (bool(f) for f in flags)))
        kept = {i for i, _, _ in rows}
        self.right = {i: r for i, r in self.right.items() if i in kept}
        return np.array([self.right[i] for i, _, _ in rows], dtype=bool)


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
        self.earlier = EarlierAnswers()
        self.targets: dict[int, int | None] = {}  # live version -> its rollback target, read once
        self.checked: tuple[int, int] | None = None  # (live version, newest row id) last paired
        self.world_open: set[tuple[int, int]] = set()  # (live, target) whose shared drop was reported
        self.world_changes: list[dict[str, Any]] = []

    def feed(self, evidence: Sequence[Evidence]) -> int:
        taken = 0
        with self.lock:
            for ev in evidence:
                if ev.window is not None and ev.version is not None:
                    self.windows.add(ev.version, *ev.window, ev.client, ev.labeled)
                    self.newest, taken = ev.version, taken + 1
                if ev.unservable is not None and ev.version not in self.unservable:
                    self.unservable[ev.version] = ev.unservable
                    self.fresh.append(ev.version)
        return taken

    def on_live(self, version: int | None) -> None:
        with self.lock:
            self.targets.clear()  # a rollback marks a version: the next target is read again

    def watch(self) -> dict[str, Any]:
        """Act on what was fed: {"unservable": [what was done per version], "window": live's check}."""
        with self.lock:
            fresh, self.fresh = self.fresh, []
            newest, self.newest = self.newest, None
            clients = self.windows.clients().get(newest, 0)
            rows = self.windows.labeled(newest) if newest is not None else []
        done = [self._unservable(v, self.unservable[v]) for v in fresh]
        return {"unservable": done, "window": None if newest is None else self._window(newest, clients, rows)}

    def figures(self) -> dict[str, Any]:
        """Versions reported unservable; live's window: its greedy accuracy on the newest feedback;
        the world changes the paired test told from a worse model."""
        live = self.policy.live_version
        with self.lock:
            window = self.windows.prequential().get(live)
            clients = self.windows.clients().get(live, 0)
            reported = len(self.unservable)
            changes = [dict(c) for c in self.world_changes]
        return {"unservable": reported, "world_changes": changes, "live_window": None if window is None else {
            "version": live, "correct": round(window[0], 3), "n": window[1], "clients": clients,
            "accuracy": round(window[0] / window[1], 4) if window[1] else None}}

    # ---- live against the version before it, on the same rows -----------------------------------
    def _window(self, version: int, clients: int, rows: list[tuple[int, Any, bool]]) -> dict[str, Any]:
        policy, cfg = self.policy, self.policy.settings
        out = {"policy_id": policy.policy_id, "version": version, "rollback": False}
        if clients < cfg.min_clients:
            return {**out, "reason": f"feedback from {clients} client(s); a rollback needs {cfg.min_clients}"}
        live = policy.live_version if policy.live_version == version else policy.live()
        if live != version:
            return {**out, "reason": f"v{version} is not live (live: v{live}); feedback ignored"}
        needed = min(cfg.rollback_min_rows, cfg.window)
        if len(rows) < needed:
            return {**out, "reason": f"{len(rows)} labeled feedback rows of v{version}; the paired test needs {needed}"}
        if self.checked == (version, rows[-1][0]):
            return {**out, "reason": "no new labeled feedback since the last paired test"}
        deciding = policy.deciding()
        if not deciding.acquire(blocking=False):  # a candidate is being judged: the next evidence checks
            return {**out, "reason": "the gate is deciding; the paired test runs with the next evidence"}
        try:
            return self._paired(version, rows, out)
        finally:
            deciding.release()

    def _paired(self, version: int, rows: list[tuple[int, Any, bool]], out: dict[str, Any]) -> dict[str, Any]:
        """Under deciding: the paired test of live against its target on live's labeled rows."""
        policy, cfg = self.policy, self.policy.settings
        if policy.live() != version:
            return {**out, "reason": f"v{version} was replaced meanwhile"}
        if version not in self.targets:
            self.targets[version] = policy.rollback_target()
        target = self.targets[version]
        live_right = np.array([r for _, _, r in rows], dtype=bool)
        if target is None:
            return self._no_target(version, float(live_right.mean()), out)
        target_right = self.earlier.on(target, rows, lambda: policy.model(target), policy.kind.correct)
        self.checked = (version, rows[-1][0])
        vs = compare(live_right, target_right, test=cfg.test, tolerance=cfg.rollback_margin, alpha=cfg.alpha,
                     bootstrap_samples=cfg.bootstrap_samples, seed=policy.seed)
        out.update(target=target, **_figures(vs))
        said = (f"on the same {vs.n} recent feedback rows v{target} {vs.live_accuracy:.3f}, live v{version} "
                f"{vs.candidate_accuracy:.3f}: diff {vs.diff:+.4f} ({vs.wins} wins, {vs.losses} losses), p={vs.p_value:.3g}")
        if vs.p_value < cfg.alpha:
            reason = f"v{target} better than live by more than {cfg.rollback_margin}: {said} < alpha={cfg.alpha}"
            done = policy.roll_back(target, reason, "prequential")
            return {**out, "rollback": True, "reason": reason, "rolled_back_to": done["to"]}
        out["reason"] = f"v{target} not better than live by more than {cfg.rollback_margin}: {said}"
        self._world(version, target, vs, out)
        return out

    def _no_target(self, version: int, live_accuracy: float, out: dict[str, Any]) -> dict[str, Any]:
        """Nothing to pair live with: said once per version, and only when its rows fell."""
        policy, cfg = self.policy, self.policy.settings
        measured = policy.accuracy(version)
        out["reason"] = f"no earlier version to compare v{version} with"
        if measured is None or live_accuracy >= measured - cfg.rollback_margin - 1e-9:
            return out
        out["reason"] = (f"accuracy on its recent labeled feedback {live_accuracy:.3f} < held-out {measured:.3f} - "
                         f"margin {cfg.rollback_margin}; no earlier version to roll back to")
        if version not in self.no_target:
            self.no_target.add(version)
            policy.emit("rollback_impossible", policy_id=policy.policy_id, version=version, reason=out["reason"])
        return out

    def _world(self, version: int, target: int, vs: GateResult, out: dict[str, Any]) -> None:
        """Both versions fell on the same rows and the earlier one is no better: the world changed."""
        policy, margin = self.policy, self.policy.settings.rollback_margin
        live_measured, target_measured = policy.accuracy(version), policy.accuracy(target)
        if live_measured is None or target_measured is None:
            return
        live_fell = vs.candidate_accuracy < live_measured - margin - 1e-9
        both = live_fell and vs.live_accuracy < target_measured - margin - 1e-9
        key = (version, target)
        if not live_fell:
            self.world_open.discard(key)  # recovered: a later shared drop is a new change
        if not both or key in self.world_open:
            return
        self.world_open.add(key)
        reason = (f"the world changed: live v{version} and v{target} both fell on the same {vs.n} recent feedback "
                  f"rows ({vs.candidate_accuracy:.3f} vs held-out {live_measured:.3f}, {vs.live_accuracy:.3f} vs "
                  f"{target_measured:.3f}) and v{target} is no better: no rollback")
        adaptation = policy.adaptation
        alarm = adaptation.open_alarm() if adaptation is not None else None
        record = {"version": version, "target": target, "n": vs.n, "live_recent_accuracy": vs.candidate_accuracy,
                  "target_recent_accuracy": vs.live_accuracy, "live_heldout_accuracy": live_measured,
                  "target_heldout_accuracy": target_measured, "diff": vs.diff, "p_value": vs.p_value,
                  "feedback_events": policy.records.evidence.get("feedback", 0),
                  "alarm": None if alarm is None else alarm["id"], "reason": reason}
        with self.lock:
            self.world_changes.append(record)
        out["world_changed"] = True
        policy.emit("world_changed", policy_id=policy.policy_id, **record)

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


def _figures(vs: GateResult) -> dict[str, Any]:
    """The paired test's figures as the window check reports them (live is the test's candidate)."""
    return {"live_recent_accuracy": vs.candidate_accuracy, "target_recent_accuracy": vs.live_accuracy,
            "diff": vs.diff, "p_value": vs.p_value, "n": vs.n, "wins": vs.wins, "losses": vs.losses}
