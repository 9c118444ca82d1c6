"""The episode join's rules as plain Python: a client's steps, served and rewarded, into transitions.

A client starts an episode, asks for (or logs) an action at each step, and with the next call sends
the reward of the step before and the observation after it; that completes the step's transition,
which is stored before the call is answered (the acknowledgement of that step). The episode ends
with the last step's reward and, when it was cut short, the observation after it.

Each call is taken in two steps, because its transitions must be stored before it counts: `plan`
checks every row of the request (any bad row refuses the whole request and changes nothing) and
returns the transitions to store, holding its episodes meanwhile; then `apply` once they are
stored, or `release` when the write failed (the client's retry is then taken afresh).

Idempotent by (episode, step): a row that names the step already served is answered with the
action served then; the same end reported again gets the same answer. A different reward for a
step already stored, or a step out of order, is a 409.

Answers (HTTP status in `FeedbackRejected.status`): 404 an episode this client never started;
410 an episode the server truncated after `episode_ttl_s` without a call; 409 out of order, a
different report of a stored step, an ended episode; 422 a bad value (the field named); 429 too
many open episodes, or steps per second, for one client; 503 a call on an episode while another
for it is in flight (retry).

Memory stays bounded: an open episode holds its served step (and, when a gate judges on client
episodes, its trajectory, up to MAX_TRAJECTORY_STEPS); ended episodes leave a small record for `tombstone_s`, at most `max_ended` of them.
"""

from __future__ import annotations

import hashlib
import math
import re
import time
from collections import OrderedDict, deque
from dataclasses import dataclass, field
from datetime import datetime, timezone
from typing import Any, Callable, Sequence

from serving.join_rules import FeedbackRejected

EPISODE_ID = re.compile(r"^[A-Za-z0-9_.:-]{1,128}$")
MAX_TRAJECTORY_STEPS = 100_000  # an episode longer than this is not the gate's evidence


@dataclass
class Served:
    """The last step served in an episode, waiting for its reward and the observation after it."""

    step: int
    obs: list[float]
    action: int
    propensity: float | None
    version: int
    answer: dict[str, Any]  # what the client got, repeated verbatim on a retry


@dataclass
class Episode:
    episode_id: str
    client: str | None
    started: float
    touched: float
    held_out: bool = False  # the gate's off-policy evidence, not the learner's
    length: int = 0  # steps stored
    ret: float = 0.0
    served: Served | None = None
    last_reward: float | None = None  # the reward the last stored step was reported with
    state: str = "open"  # open | terminated | truncated
    reason: str | None = None
    busy: bool = False  # a call's transitions are being stored
    ended: dict[str, Any] | None = None  # the end's report and answer
    trajectory: dict[str, list] | None = None  # for the gate: obs, actions, propensities, rewards, versions

    def view(self) -> dict[str, Any]:
        return {"episode_id": self.episode_id, "state": self.state, "reason": self.reason, "length": self.length,
                "return": self.ret}


@dataclass
class StepRow:
    """One row of an act / log_action call, as the route parsed it."""

    episode_id: str
    obs: list[float]
    step: int | None = None
    reward: float | None = None
    action: int | None = None  # the served (or logged) action
    propensity: float | None = None
    version: int = 0
    answer: dict[str, Any] = field(default_factory=dict)


@dataclass
class EndRow:
    episode_id: str
    reward: float
    terminated: bool
    truncated: bool
    final_obs: list[float] | None = None
    step: int | None = None


@dataclass
class Plan:
    """A checked call: its transitions to store, and what to do once they are."""

    episodes: list[Episode]
    transitions: list[dict[str, Any]]
    new: list[tuple[Episode, StepRow]] = field(default_factory=list)  # steps to record as served
    repeats: dict[int, dict[str, Any]] = field(default_factory=dict)  # row index -> the earlier answer
    ends: list[tuple[Episode, EndRow]] = field(default_factory=list)


@dataclass
class JoinStats:
    started: int = 0
    steps_stored: int = 0
    episodes_ended: int = 0
    episodes_expired: int = 0
    repeats: int = 0
    rejected: dict[int, int] = field(default_factory=dict)


class EpisodeJoin:
    def __init__(self, policy_id: str, table: str, gamma: float, episode_ttl_s: float = 300.0,
                 max_open_per_client: int = 1024, max_steps_per_s: float | None = None, holdout: float = 0.0,
                 for_gate: bool = False, tombstone_s: float = 3600.0, max_ended: int = 100_000, clock: Callable[[], float] = time.time):
        self.policy_id, self.table, self.gamma = policy_id, table, gamma
        self.ttl_s, self.max_open, self.holdout = episode_ttl_s, max_open_per_client, holdout
        self.tombstone_s, self.max_ended, self.clock = tombstone_s, max_ended, clock
        self.rate = max_steps_per_s
        self.for_gate = for_gate  # keep each episode's trajectory: the gate's evidence once it ends
        self.open: dict[str, Episode] = {}
        self.ended: OrderedDict[str, Episode] = OrderedDict()
        self.open_by_client: dict[str | None, int] = {}
        self._buckets: dict[str | None, tuple[float, float]] = {}  # client -> (tokens, at)
        self._made = 0
        self.stats = JoinStats()
        self.finished: deque[tuple[float, int, str]] = deque(maxlen=1000)  # (return, length, state) of ended episodes

    # ---- starting ---------------------------------------------------------------------------
    def start(self, names: Sequence[str | None], client: str | None, field_name: str) -> list[str]:
        now = self.clock()
        self.expire(now)
        fresh, ids = 0, []
        for i, name in enumerate(names):
            where = f"{field_name}[{i}]" if len(names) > 1 or field_name.endswith("s") else field_name
            if name is None:
                fresh += 1
                ids.append(None)
                continue
            if not EPISODE_ID.match(name):
                raise self._refuse(422, f"{where}: an episode id is 1-128 letters, digits, '_', '.', ':', '-'")
            if name in self.ended:
                raise self._refuse(409, f"{where}: episode {name!r} has ended; start one under a new id")
            known = self.open.get(name)
            if known is not None and known.client != client:
                raise self._refuse(409, f"{where}: episode id {name!r} is taken by another client")
            fresh += known is None
            ids.append(name)
        if len(set(i for i in ids if i is not None)) != len([i for i in ids if i is not None]):
            raise self._refuse(422, f"{field_name}: an episode id appears twice")
        room = self.max_open - self.open_by_client.get(client, 0)
        if fresh > room:
            raise self._refuse(429, f"{field_name}: {fresh} new episode(s) would pass this client's limit of "
                                    f"{self.max_open} open episodes ({max(room, 0)} left); end some first")
        out = []
        for name in ids:
            if name is None:
                self._made += 1
                name = f"ep-{int(now * 1000):x}-{self._made:x}"
            if name not in self.open:
                self.open[name] = Episode(name, client, now, now, held_out=self._held_out(name))
                self.open_by_client[client] = self.open_by_client.get(client, 0) + 1
                self.stats.started += 1
            out.append(name)
        return out

    def _held_out(self, episode_id: str) -> bool:
        if self.holdout <= 0:
            return False
        h = int.from_bytes(hashlib.blake2b(episode_id.encode(), digest_size=8).digest(), "big")
        return h / 2**64 < self.holdout

    # ---- steps --------------------------------------------------------------------------------
    def plan_steps(self, rows: Sequence[StepRow], client: str | None, field_name: str) -> Plan:
        """Check an act / log_action call; every row's episode is held until `apply` or `release`."""
        now = self.clock()
        self.expire(now)
        self._spend(client, len(rows), now)
        plan = Plan([], [])
        seen: set[str] = set()
        for i, row in enumerate(rows):
            where = f"{field_name}[{i}]" if field_name.endswith("s") else field_name
            ep = self._episode(row.episode_id, client, where, seen)
            served = ep.served
            step = row.step if row.step is not None else (ep.length + (served is not None))
            if served is not None and step == served.step:  # a retry of a step already answered
                self._same_previous_reward(ep, row, step, where)
                plan.repeats[i] = served.answer
                continue
            expected = ep.length + (served is not None)
            if step != expected:
                raise self._refuse(409, f"{where}: episode {ep.episode_id!r} is at step {expected}, not {step}")
            if served is None:
                if row.reward is not None:
                    raise self._refuse(422, f"{_field(where, 'reward')}: step 0 has no step before it to reward")
            else:
                if row.reward is None:
                    raise self._refuse(422, f"{_field(where, 'reward')}: step {step} of {ep.episode_id!r} needs "
                                            f"the reward of step {step - 1}")
                plan.transitions.append(self._transition(ep, served, row.reward, row.obs, False, False, now))
            plan.new.append((ep, row))
        self._hold(plan, [ep for ep, _ in plan.new])
        return plan

    def _same_previous_reward(self, ep: Episode, row: StepRow, step: int, where: str) -> None:
        if step > 0 and row.reward is not None and row.reward != ep.last_reward:
            raise self._refuse(409, f"{_field(where, 'reward')}: step {step - 1} of {ep.episode_id!r} was reported "
                                    f"with reward {ep.last_reward!r}, not {row.reward!r}")
        self.stats.repeats += 1

    # ---- ends ---------------------------------------------------------------------------------
    def plan_ends(self, rows: Sequence[EndRow], client: str | None, field_name: str) -> Plan:
        now = self.clock()
        self.expire(now)
        plan = Plan([], [])
        seen: set[str] = set()
        for i, row in enumerate(rows):
            where = f"{field_name}[{i}]" if field_name.endswith("s") else field_name
            if row.terminated == row.truncated:
                raise self._refuse(422, f"{where}: an episode ends either terminated or truncated (one of them true)")
            done = self.ended.get(row.episode_id)
            if done is not None and done.client == client and done.ended is not None:
                if done.ended["report"] != (row.reward, row.terminated, row.truncated):
                    raise self._refuse(409, f"{where}: episode {row.episode_id!r} ended with another report")
                plan.repeats[i] = done.ended["answer"]
                continue
            ep = self._episode(row.episode_id, client, where, seen)
            served = ep.served
            if served is None:
                raise self._refuse(409, f"{where}: episode {ep.episode_id!r} has no step served to end it on")
            if row.step is not None and row.step != served.step:
                raise self._refuse(409, f"{where}: episode {ep.episode_id!r}'s last step is {served.step}, "
                                        f"not {row.step}")
            if row.truncated and row.final_obs is None:
                raise self._refuse(422, f"{_field(where, 'final_obs')}: a truncated episode's last step bootstraps "
                                        "from the observation after it")
            nxt = row.final_obs if row.final_obs is not None else served.obs
            plan.transitions.append(self._transition(ep, served, row.reward, nxt, row.terminated, row.truncated, now))
            plan.ends.append((ep, row))
        self._hold(plan, [ep for ep, _ in plan.ends])
        return plan

    # ---- after the write ------------------------------------------------------------------------
    def apply(self, plan: Plan) -> list[Episode]:
        """The plan's transitions are stored: record its steps; the episodes it ended."""
        now = self.clock()
        for ep in plan.episodes:
            ep.busy, ep.touched = False, now
        for ep, row in plan.new:
            self._complete(ep, row.reward)
            step = row.step if row.step is not None else ep.length
            ep.served = Served(step, row.obs, int(row.action), row.propensity, row.version, {**row.answer, "step": step})
        finished = []
        for ep, row in plan.ends:
            self._complete(ep, row.reward)
            ep.served = None
            answer = {"episode_id": ep.episode_id, "return": ep.ret, "length": ep.length}
            ep.ended = {"report": (row.reward, row.terminated, row.truncated), "answer": answer}
            self._close(ep, "terminated" if row.terminated else "truncated", None, now)
            self.stats.episodes_ended += 1
            finished.append(ep)
        return finished

    def release(self, plan: Plan) -> None:
        """The write failed: nothing of the call counts; its episodes take the retry."""
        for ep in plan.episodes:
            ep.busy = False

    def _complete(self, ep: Episode, reward: float | None) -> None:
        served = ep.served
        if served is None or reward is None:
            return
        if ep.trajectory is not None and ep.length < MAX_TRAJECTORY_STEPS:
            t = ep.trajectory
            t["obs"].append(served.obs)
            t["actions"].append(served.action)
            t["propensities"].append(served.propensity)
            t["rewards"].append(reward)
            t["versions"].append(served.version)
        ep.length += 1
        ep.ret += reward
        ep.last_reward = reward
        self.stats.steps_stored += 1

    # ---- reading and expiry ---------------------------------------------------------------------
    def view(self, episode_id: str, client: str | None) -> dict[str, Any]:
        self.expire(self.clock())
        ep = self.open.get(episode_id) or self.ended.get(episode_id)
        if ep is None or ep.client != client:
            raise self._refuse(404, f"episode_id: unknown episode {episode_id!r}")
        return ep.view()

    def expire(self, now: float) -> list[Episode]:
        """Truncate episodes no call touched for `episode_ttl_s` (their stored steps are kept)."""
        stale = [ep for ep in self.open.values() if not ep.busy and now - ep.touched > self.ttl_s]
        for ep in stale:
            ep.served = None  # served but never rewarded: not a step of the episode
            self._close(ep, "truncated", f"no call for {self.ttl_s:g}s: truncated by the server", now)
            self.stats.episodes_expired += 1
        while self.ended and (len(self.ended) > self.max_ended
                              or now - next(iter(self.ended.values())).touched > self.tombstone_s):
            self.ended.popitem(last=False)
        return stale

    def _close(self, ep: Episode, state: str, reason: str | None, now: float) -> None:
        ep.state, ep.reason, ep.touched = state, reason, now
        self.finished.append((ep.ret, ep.length, state))
        self.open.pop(ep.episode_id, None)
        self.open_by_client[ep.client] = self.open_by_client.get(ep.client, 1) - 1
        if self.open_by_client[ep.client] <= 0:
            self.open_by_client.pop(ep.client)
        self.ended[ep.episode_id] = ep

    def gate_episode(self, ep: Episode) -> dict[str, Any] | None:
        """A finished episode as the gate's q_policy evidence (None: not usable); `slice` "ope" when it was
        held out of training (off-policy evaluation may use it), "trained" when the learner has it."""
        t = ep.trajectory
        if t is None or not t["actions"] or len(t["actions"]) != ep.length:
            return None
        if any(p is None for p in t["propensities"]):
            return None  # off-policy evaluation needs the probability of every action
        versions = set(t["versions"])
        return {"type": "episode", "obs": t["obs"], "actions": t["actions"], "propensities": t["propensities"],
                "rewards": t["rewards"], "version": versions.pop() if len(versions) == 1 else None,
                "client": ep.episode_id, "slice": "ope" if ep.held_out else "trained"}

    # ---- helpers ----------------------------------------------------------------------------------
    def _episode(self, episode_id: str, client: str | None, where: str, seen: set[str]) -> Episode:
        if episode_id in seen:
            raise self._refuse(422, f"{where}: episode {episode_id!r} appears twice in one request")
        seen.add(episode_id)
        ep = self.open.get(episode_id)
        if ep is None or ep.client != client:
            done = self.ended.get(episode_id)
            if done is not None and done.client == client:
                if done.reason is not None:
                    raise self._refuse(410, f"{where}: episode {episode_id!r} expired ({done.reason})")
                raise self._refuse(409, f"{where}: episode {episode_id!r} has ended")
            raise self._refuse(404, f"{where}: unknown episode {episode_id!r}; start it with POST .../episodes")
        if ep.busy:
            raise self._refuse(503, f"{where}: a call on episode {episode_id!r} is in flight; retry")
        return ep

    def _hold(self, plan: Plan, episodes: list[Episode]) -> None:
        plan.episodes = episodes
        for ep in episodes:
            ep.busy = True
            if self.for_gate and ep.trajectory is None:
                ep.trajectory = {"obs": [], "actions": [], "propensities": [], "rewards": [], "versions": []}

    def _spend(self, client: str | None, steps: int, now: float) -> None:
        """A token bucket of `max_steps_per_s` per client, one second deep."""
        if self.rate is None:
            return
        tokens, at = self._buckets.get(client, (self.rate, now))
        tokens = min(self.rate, tokens + (now - at) * self.rate)
        if steps > tokens:
            wait = (steps - tokens) / self.rate
            raise self._refuse(429, f"steps: {steps} step(s) would pass this client's limit of {self.rate:g} "
                                    f"steps per second", retry_after_s=wait)
        self._buckets[client] = (tokens - steps, now)

    def _transition(self, ep: Episode, served: Served, reward: float, next_obs: list[float], terminated: bool,
                    truncated: bool, now: float) -> dict[str, Any]:
        return {"id": f"{self.policy_id}:{ep.episode_id}:{served.step}", "table": self.table, "source": "client",
                "actor_id": f"client:{ep.client or '-'}", "policy_id": self.policy_id,
                "policy_version": served.version, "created_at": datetime.fromtimestamp(now, timezone.utc),
                "obs": served.obs, "action": served.action, "reward": reward, "next_obs": next_obs,
                "terminated": terminated, "truncated": truncated,
                "logp": math.log(served.propensity) if served.propensity else None, "discount": self.gamma,
                "held_out": ep.held_out}

    def _refuse(self, status: int, detail: str, retry_after_s: float | None = None) -> FeedbackRejected:
        self.stats.rejected[status] = self.stats.rejected.get(status, 0) + 1
        return FeedbackRejected(status, detail, retry_after_s)


def _field(where: str, name: str) -> str:
    """`episode_ids[3]` -> `rewards[3]`; `episode_id` -> `reward`."""
    if "[" in where:
        return f"{name}s{where[where.index('['):]}"
    return name
