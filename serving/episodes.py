"""The episode joiner: the Ray actor every policy replica records client episodes in.

The rules are `serving.episode_join.EpisodeJoin` (plain Python); this is its asyncio shell, the
group commits of its transitions to the policy's replay table (serving/join_commit.py: a call is
answered only once its transitions are durable) and the hand-off of finished episodes to the gate.

A call's answer is `{"status": 200, "body": ...}` or `{"status": 4xx/5xx, "detail": reason}` (the
replica turns it into the HTTP answer); it never raises for a client's error. The episodes of the
gate's slice (`holdout`, by a hash of the episode id) are the gate's evidence alone: their steps
are not stored, so no learner sees them. Every finished episode with a propensity at each step goes
to the gate, the slice marked, so its canary judges on all of them and its off-policy estimate only
on the slice. A restarted joiner has forgotten its open episodes (their calls get 404); every step it
acknowledged is in the replay store.
"""

from __future__ import annotations

import asyncio
import logging
from typing import Any

import ray

from serving.episode_join import EndRow, EpisodeJoin, Plan, StepRow
from serving.join_commit import CommitFailed, GroupCommit
from serving.join_rules import FeedbackRejected

log = logging.getLogger(__name__)

SWEEP_EVERY_S = 5.0  # how often abandoned episodes are looked for when no call comes


def joiner_name(policy_id: str) -> str:
    return f"evolve-episodes-{policy_id}"


class EpisodeJoiner:
    def __init__(self, writer: Any, policy_id: str, table: str, gamma: float, episode_ttl_s: float = 300.0,
                 max_open_per_client: int = 1024, max_steps_per_s: float | None = None, holdout: float = 0.0,
                 gate_name: str | None = None, commit_interval_s: float = 0.0, commit_timeout_s: float = 10.0):
        self.join = EpisodeJoin(policy_id, table, gamma, episode_ttl_s, max_open_per_client, max_steps_per_s,
                                holdout if gate_name is not None else 0.0, for_gate=gate_name is not None)
        self.policy_id, self.gate_name = policy_id, gate_name
        # a client is a user: its steps are never held for the learner's pace (they count toward it)
        self.commit = GroupCommit(writer, table, interval_s=commit_interval_s, give_up_s=commit_timeout_s,
                                  paced=False)
        self._gate: Any = None
        self._sweeper: asyncio.Task | None = None

    # ---- calls --------------------------------------------------------------------------------
    async def start(self, names: list[str | None], client: str | None, field_name: str) -> dict:
        self._sweep_later()
        try:
            return {"status": 200, "body": self.join.start(names, client, field_name)}
        except FeedbackRejected as exc:
            return _refusal(exc)

    async def steps(self, rows: list[StepRow], client: str | None, field_name: str) -> dict:
        """An act / log_action call: per row the step it answers and, for a retry, the earlier answer."""
        try:
            plan = self.join.plan_steps(rows, client, field_name)
        except FeedbackRejected as exc:
            return _refusal(exc)
        failed = await self._store(plan)
        if failed is not None:
            return failed
        self.join.apply(plan)
        # per row: the answer it gets (an earlier one on a retry, flagged `repeat`), with its step
        new = {id(row): ep for ep, row in plan.new}
        out = [{**plan.repeats[i], "repeat": True} if i in plan.repeats else new[id(row)].served.answer
               for i, row in enumerate(rows)]
        return {"status": 200, "body": out}

    async def end(self, rows: list[EndRow], client: str | None, field_name: str) -> dict:
        try:
            plan = self.join.plan_ends(rows, client, field_name)
        except FeedbackRejected as exc:
            return _refusal(exc)
        failed = await self._store(plan)
        if failed is not None:
            return failed
        finished = self.join.apply(plan)
        self._finished(finished)
        answers = {ep.episode_id: ep.ended["answer"] for ep in finished}
        return {"status": 200, "body": [plan.repeats.get(i) or answers[row.episode_id] for i, row in enumerate(rows)]}

    async def view(self, episode_id: str, client: str | None) -> dict:
        try:
            return {"status": 200, "body": self.join.view(episode_id, client)}
        except FeedbackRejected as exc:
            return _refusal(exc)

    async def _store(self, plan: Plan) -> dict | None:
        """Store the plan's transitions (the gate's slice is not stored); a refusal when that failed."""
        rows = [{k: v for k, v in t.items() if k != "held_out"} for t in plan.transitions if not t["held_out"]]
        done = self.commit.put(rows) if rows else None
        if done is None:
            return None
        try:
            await done
            return None
        except CommitFailed as exc:
            self.join.release(plan)
            return {"status": exc.status, "retry_after_s": 1 if exc.status == 503 else None,
                    "detail": f"the step(s) are not stored: {exc.detail}; send the same call again"}

    # ---- finished episodes ------------------------------------------------------------------------
    def _finished(self, episodes: list) -> None:
        if self.gate_name is None:
            return
        items = [item for item in map(self.join.gate_episode, episodes) if item is not None]
        if items:
            self._tell_gate(items)

    def _tell_gate(self, items: list[dict]) -> None:
        try:
            if self._gate is None:
                self._gate = ray.get_actor(self.gate_name)
            self._gate.evidence.remote(self.policy_id, items)
        except Exception as exc:  # the gate is restarting or gone: these episodes are not its evidence
            self._gate = None
            log.warning("episode joiner: cannot reach gate %r: %s", self.gate_name, exc)

    def _sweep_later(self) -> None:
        if self._sweeper is None or self._sweeper.done():
            self._sweeper = asyncio.get_running_loop().create_task(self._sweep())

    async def _sweep(self) -> None:
        while True:
            await asyncio.sleep(SWEEP_EVERY_S)
            self.join.expire(self.join.clock())

    def stats(self) -> dict[str, Any]:
        s = self.join.stats
        c = self.commit.stats()
        recent = list(self.join.finished)[-100:]
        return {"episodes_started": s.started, "episodes_open": len(self.join.open), "episodes_ended": s.episodes_ended,
                "episodes_truncated_by_ttl": s.episodes_expired, "steps_stored": c["written"],
                "steps_acknowledged": s.steps_stored, "repeats": s.repeats, "rejected": dict(s.rejected),
                "write_errors": c["write_errors"], "commits_given_up": c["given_up"],
                "mean_return": sum(r for r, _, _ in recent) / len(recent) if recent else None,
                "mean_length": sum(n for _, n, _ in recent) / len(recent) if recent else None}

    def recent_returns(self, since: int = 0) -> tuple[int, list[float]]:
        """Returns of episodes ended after the first `since` ever ended: (count ended so far, returns)."""
        total = self.join.stats.episodes_ended + self.join.stats.episodes_expired
        new = min(total - since, len(self.join.finished))
        return total, [r for r, _, _ in list(self.join.finished)[len(self.join.finished) - new:]] if new > 0 else []

    async def flush(self, timeout_s: float = 30.0) -> bool:
        deadline = asyncio.get_running_loop().time() + timeout_s
        while not self.commit.idle() and asyncio.get_running_loop().time() < deadline:
            await asyncio.sleep(0.01)
        return self.commit.idle()


def _refusal(exc: FeedbackRejected) -> dict:
    return {"status": exc.status, "detail": exc.detail, "retry_after_s": exc.retry_after_s}


RemoteEpisodeJoiner = ray.remote(num_cpus=0, max_restarts=-1, max_task_retries=-1)(EpisodeJoiner)


def get_or_create_episode_joiner(writer: Any, policy_id: str, table: str, gamma: float, **kwargs: Any) -> Any:
    quiet = {"env_vars": {"RAY_WARN_BLOCKING_GET_INSIDE_ASYNC": "0"}}
    return RemoteEpisodeJoiner.options(name=joiner_name(policy_id), get_if_exists=True, runtime_env=quiet).remote(
        writer, policy_id, table, gamma, **kwargs)
