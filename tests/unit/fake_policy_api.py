"""An in-process fake of a served RL policy's client-episode API (docs/client-rl.md's contract),
for httpx.MockTransport.

It keeps the contract's rules as a server must: step indices (asking step t again answers what
was served for t; a step beyond the next one is 409), the previous step's reward required after
step 0 and refused at step 0, a step reported again with another reward is 409, unknown episodes
404, expired ones 410, an episode ended again with another report 409, and a refusal changes
nothing for any episode of the request. `step` is optional as in the contract, so a client that
leaves it out and retries is counted twice, and the stored transitions show it.

Faults are scripted per route: a refusal (429/503 with Retry-After) or a connection that never
reached the server, before the request is applied; a lost answer (502/504) or a dropped
connection after it is applied.
"""

from __future__ import annotations

import json
import re
from collections import Counter
from dataclasses import dataclass, field
from typing import Any, Callable

import httpx

ID = re.compile(r"^[A-Za-z0-9_.:-]{1,128}$")


class Refused(Exception):
    def __init__(self, status: int, detail: str):
        super().__init__(detail)
        self.status, self.detail = status, detail


@dataclass
class FakeEpisode:
    state: str = "open"  # open | terminated | truncated
    reason: str | None = None
    next: int = 0  # the index of the next step
    obs: dict[int, list] = field(default_factory=dict)
    served: dict[int, int] = field(default_factory=dict)
    rewards: dict[int, float] = field(default_factory=dict)  # step -> the reward the env gave for it
    report: tuple | None = None  # how it was ended
    expired: bool = False


@dataclass
class Fault:
    status: int | None = None
    retry_after: float | None = None
    drop: bool = False
    applied: bool = False  # after the request is applied: its answer is lost


def cartpole_rule(obs: list[float]) -> int:
    """A fixed policy: push the cart the way the pole falls."""
    return int(obs[2] + obs[3] > 0)


class FakePolicyAPI:
    def __init__(self, policy_id: str = "cartpole", obs_dim: int = 4, n_actions: int = 2,
                 rule: Callable[[list[float]], int] = cartpole_rule, key: str | None = None,
                 version: int = 7, version_per_row: bool = False, max_open: int = 100_000):
        self.policy_id, self.obs_dim, self.n_actions, self.rule = policy_id, obs_dim, n_actions, rule
        self.key, self.version, self.version_per_row, self.max_open = key, version, version_per_row, max_open
        self.episodes: dict[str, FakeEpisode] = {}
        self.stored: Counter = Counter()  # (episode, step) -> times its transition was stored
        self.requests: list[tuple[str, str, Any, httpx.Headers]] = []
        self.faults: dict[str, list[Fault]] = {}
        self.made = 0

    @property
    def transport(self) -> httpx.MockTransport:
        return httpx.MockTransport(self.handle)

    def fault(self, route: str, *, status: int | None = None, retry_after: float | None = None, drop: bool = False,
              applied: bool = False, times: int = 1) -> None:
        self.faults.setdefault(route, []).extend(Fault(status, retry_after, drop, applied) for _ in range(times))

    def count(self, route: str) -> int:
        return sum(1 for _, r, _, _ in self.requests if r == route)

    def expire(self, episode_id: str) -> None:
        ep = self.episodes[episode_id]
        ep.state, ep.reason, ep.expired = "truncated", "expired: no call for episode_ttl_s", True

    # ---- the transport -------------------------------------------------------------------------
    def handle(self, request: httpx.Request) -> httpx.Response:
        prefix = f"/v1/policies/{self.policy_id}/"
        if not request.url.path.startswith(prefix):
            return httpx.Response(404, json={"detail": f"policy: no policy at {request.url.path}"})
        route = request.url.path[len(prefix):]
        body = json.loads(request.content) if request.content else None
        self.requests.append((request.method, route, body, request.headers))
        fault = self.faults.get(route, []).pop(0) if self.faults.get(route) else None
        if fault is not None and not fault.applied:
            if fault.drop:
                raise httpx.ConnectError("connection refused", request=request)
            return httpx.Response(fault.status, json={"detail": "fake: busy"},
                                  headers={} if fault.retry_after is None else {"retry-after": str(fault.retry_after)})
        try:
            if self.key is not None and request.headers.get("authorization") != f"Bearer {self.key}":
                raise Refused(401, "authorization: a valid API key is needed")
            status, answer = 200, self._route(request.method, route, body)
        except Refused as exc:
            status, answer = exc.status, {"detail": exc.detail}
        if fault is not None:
            if fault.drop:
                raise httpx.ReadError("connection dropped", request=request)
            return httpx.Response(fault.status, json={"detail": "fake: the answer was lost"})
        return httpx.Response(status, json=answer)

    def _route(self, method: str, route: str, body: Any) -> Any:
        if method == "GET" and route.startswith("episodes/"):
            return self._look(route.removeprefix("episodes/"))
        handlers = {"episodes": self._start, "act": self._act, "log_action": self._log_action,
                    "episodes/end": self._end}
        if method != "POST" or route not in handlers:
            raise Refused(404, f"route: no {method} {route}")
        return handlers[route](body)

    # ---- routes --------------------------------------------------------------------------------
    def _start(self, body: dict) -> dict:
        if "count" in body:
            ids = [self._made_id() for _ in range(body["count"])]
        elif "episode_ids" in body:
            ids = body["episode_ids"]
        else:
            ids = [body.get("episode_id") or self._made_id()]
        for i, eid in enumerate(ids):
            if not isinstance(eid, str) or not ID.match(eid):
                raise Refused(422, f"episode_ids[{i}]: not an episode id: {eid!r}")
            if eid in self.episodes and self.episodes[eid].state != "open":
                raise Refused(409, f"episode_ids[{i}]: episode {eid!r} has ended")
        if sum(e.state == "open" for e in self.episodes.values()) + len(ids) > self.max_open:
            raise Refused(429, "episodes: too many open episodes for this key")
        for eid in ids:
            self.episodes.setdefault(eid, FakeEpisode())
        return {"episode_id": ids[0]} if "episode_ids" not in body and "count" not in body else {"episode_ids": ids}

    def _made_id(self) -> str:
        self.made += 1
        return f"srv-{self.made}"

    def _act(self, body: dict) -> dict:
        return self._steps(body, chosen=None)

    def _log_action(self, body: dict) -> dict:
        batch = "episode_ids" in body
        actions = body["actions"] if batch else [body["action"]]
        props = body.get("propensities") if batch else [body.get("propensity")]
        for i, (a, p) in enumerate(zip(actions, props or [None] * len(actions))):
            if not (isinstance(a, int) and 0 <= a < self.n_actions):
                raise Refused(422, f"actions[{i}]: must be in [0, {self.n_actions}), got {a!r}")
            if p is not None and not 0 < p <= 1:
                raise Refused(422, f"propensities[{i}]: must be in (0, 1], got {p!r}")
        answer = self._steps(body, chosen=actions)
        return {"steps": answer["steps"]} if batch else {"step": answer["step"]}

    def _steps(self, body: dict, chosen: list[int] | None) -> dict:
        batch = isinstance(body["obs"], list) and bool(body["obs"]) and isinstance(body["obs"][0], list)
        obs = body["obs"] if batch else [body["obs"]]
        n = len(obs)
        ids = body.get("episode_ids") if batch else [body.get("episode_id")]
        steps = body.get("steps") if batch else [body.get("step")]
        rewards = body.get("rewards") if batch else [body.get("reward")]
        ids, steps, rewards = ids or [None] * n, steps or [None] * n, rewards or [None] * n
        if not len(ids) == len(steps) == len(rewards) == n or n > 1024:
            raise Refused(422, "episode_ids: obs, episode_ids, steps and rewards need one entry per row")
        for i, row in enumerate(obs):
            if len(row) != self.obs_dim:
                raise Refused(422, f"obs[{i}]: observation must have {self.obs_dim} value(s), got {len(row)}")
        plan = [None if eid is None else self._check_step(i, eid, steps[i], rewards[i], batch)
                for i, eid in enumerate(ids)]
        actions = []
        for i, row in enumerate(obs):
            if ids[i] is None:  # no episode: answered, nothing logged
                actions.append(self.rule(row) if chosen is None else chosen[i])
                continue
            ep, t, new = plan[i]
            if new:
                self._apply(ids[i], ep, t, row, rewards[i], self.rule(row) if chosen is None else chosen[i])
            actions.append(ep.served[t])
        answered = [None if p is None else p[1] for p in plan]
        probs = [[0.5] * self.n_actions for _ in actions]
        if not batch:
            return {"policy_id": self.policy_id, "version": self.version, "action": actions[0], "q_values": [0.0] *
                    self.n_actions, "propensity": 0.5, "action_probs": probs[0], "step": answered[0]}
        version = [self.version] * n if self.version_per_row else self.version
        return {"policy_id": self.policy_id, "version": version, "action": actions,
                "q_values": [[0.0] * self.n_actions for _ in actions], "propensity": [0.5] * n,
                "action_probs": probs, "steps": answered}

    def _episode(self, where: str, eid: str) -> FakeEpisode:
        ep = self.episodes.get(eid)
        if ep is None:
            raise Refused(404, f"{where}: unknown episode {eid!r}")
        if ep.expired:
            raise Refused(410, f"{where}: episode {eid!r} expired")
        return ep

    def _check_step(self, i: int, eid: str, step: int | None, reward: float | None, batch: bool) -> tuple:
        """(episode, step index, whether the step is new); Refused when the step breaks a rule."""
        field_ = (lambda name: f"{name}s[{i}]") if batch else (lambda name: name)
        ep = self._episode(field_("episode_id"), eid)
        if ep.state != "open":
            raise Refused(409, f"{field_('episode_id')}: episode {eid!r} has ended")
        t = ep.next if step is None else step
        if t < ep.next:  # asked again: the step already served, if its reward is the same
            if t > 0 and ep.rewards[t - 1] != reward:
                raise Refused(409, f"{field_('reward')}: step {t - 1} was reported with reward {ep.rewards[t - 1]}")
            return ep, t, False
        if t > ep.next:
            raise Refused(409, f"{field_('step')}: step {t} is not the next one ({ep.next})")
        if t > 0 and reward is None:
            raise Refused(422, f"{field_('reward')}: the previous step's reward is required after step 0")
        if t == 0 and reward is not None:
            raise Refused(422, f"{field_('reward')}: step 0 has no previous step to reward")
        return ep, t, True

    def _apply(self, eid: str, ep: FakeEpisode, t: int, row: list, reward: float | None, action: int) -> None:
        if t > 0:
            ep.rewards[t - 1] = reward
            self.stored[(eid, t - 1)] += 1
        ep.obs[t], ep.served[t], ep.next = row, action, t + 1

    def _end(self, body: dict) -> dict:
        batch = "episode_ids" in body
        keys = ("episode_id", "step", "reward", "terminated", "truncated", "final_obs")
        rows = list(zip(*(body.get(k + "s" if batch and k in ("episode_id", "step", "reward") else k) or
                          [None] * len(body["episode_ids"]) for k in keys))) if batch else \
            [tuple(body.get(k) for k in keys)]
        plan = [self._check_end(i, *row) for i, row in enumerate(rows)]
        answers = []
        for (eid, step, reward, terminated, truncated, final_obs), (ep, new) in zip(rows, plan):
            if new:
                if ep.next > 0:
                    ep.rewards[ep.next - 1] = reward
                    self.stored[(eid, ep.next - 1)] += 1
                ep.state = "terminated" if terminated else "truncated"
                ep.report = (step, reward, terminated, truncated, final_obs)
            answers.append({"episode_id": eid, "return": sum(ep.rewards.values()), "length": ep.next})
        return {"episodes": answers} if batch else answers[0]

    def _check_end(self, i: int, eid: str, step: int | None, reward: float | None, terminated: bool,
                   truncated: bool, final_obs: list | None) -> tuple[FakeEpisode, bool]:
        ep = self._episode(f"episode_ids[{i}]", eid)
        if bool(terminated) == bool(truncated):
            raise Refused(422, f"terminated[{i}]: exactly one of terminated, truncated must be true")
        if truncated and final_obs is None:
            raise Refused(422, f"final_obs[{i}]: required when truncated")
        if ep.state != "open":
            if ep.report == (step, reward, terminated, truncated, final_obs):
                return ep, False
            raise Refused(409, f"episode_ids[{i}]: episode {eid!r} ended with another report")
        if step is not None and step != ep.next - 1:
            raise Refused(409, f"steps[{i}]: the last step is {ep.next - 1}, not {step}")
        if ep.next > 0 and reward is None:
            raise Refused(422, f"rewards[{i}]: the last step's reward is required")
        return ep, True

    def _look(self, eid: str) -> dict:
        ep = self.episodes.get(eid)
        if ep is None:
            raise Refused(404, f"episode_id: unknown episode {eid!r}")
        return {"episode_id": eid, "state": ep.state, "reason": ep.reason, "length": len(ep.rewards),
                "return": sum(ep.rewards.values())}
