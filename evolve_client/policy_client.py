"""`PolicyClient`: play episodes of an external application through a served RL policy over HTTP.

The methods mirror RLlib's PolicyClient: start an episode, ask for actions (or log the ones
the application chose itself), report rewards, end it. The API takes the reward of step t-1
with the request of step t, so `log_returns` only adds to the episode's pending reward, and
the next `get_action`, `log_action` or `end_episode` carries it (a step no reward was logged
for is reported with reward 0.0, as in RLlib).

The client counts each episode's steps and sends the index with every request, so a retried
request (see requester.py) is answered, not applied twice. An episode's count and pending
reward change only when the server has acknowledged the request; after an error they are as
before it, and the same call can be made again.
"""

from __future__ import annotations

import math
import re
import time
import uuid
from typing import Any, Callable, Sequence

import httpx
import numpy as np

from evolve_client.requester import PolicyClientError, Requester, RetryPolicy

MAX_BATCH = 1024  # rows per request the API takes
POLICY_PATH = re.compile(r"^(?P<root>.*?)/v1/policies/(?P<id>[^/]+)/?$")


class _Episode:
    __slots__ = ("step", "reward")

    def __init__(self) -> None:
        self.step = 0  # the index of the next step to ask for or log
        self.reward = 0.0  # the reward of step `step - 1` so far

    def advance(self) -> None:
        self.step += 1
        self.reward = 0.0


class PolicyClient:
    """`url`: the server's root (then `policy_id` names the policy) or the policy's own
    `.../v1/policies/<id>`. `key`: an API key (serving.auth). `client_name`: sent as
    `x-evolve-client` (who the client is; a canary keeps a client on one side).
    `transport`: an httpx transport (tests pass an httpx.MockTransport)."""

    def __init__(self, url: str, key: str | None = None, policy_id: str | None = None,
                 client_name: str | None = None, timeout_s: float = 10.0, max_retries: int = 5,
                 transport: httpx.BaseTransport | None = None, *, backoff_s: float = 0.1,
                 max_backoff_s: float = 5.0, verify: str | bool = True,
                 sleep: Callable[[float], Any] = time.sleep):
        self.base_url, self.policy_id = policy_url(url, policy_id)
        headers = {}
        if key:
            headers["authorization"] = f"Bearer {key}"
        if client_name:
            headers["x-evolve-client"] = client_name
        self._http = httpx.Client(base_url=self.base_url + "/", timeout=timeout_s, transport=transport,
                                  headers=headers, verify=verify)
        self._calls = Requester(self._http, RetryPolicy(max_retries, backoff_s, max_backoff_s), sleep)
        self._episodes: dict[str, _Episode] = {}
        self.last_version: int | list[int] | None = None  # the version(s) that answered the last /act
        self.last_propensity: float | list[float] | None = None  # the probability of each action it served

    # ---- episodes ------------------------------------------------------------------------------
    def start_episode(self, episode_id: str | None = None) -> str:
        """Open an episode; without an id the client makes one (a named start is idempotent, so
        a retry after a lost answer cannot open a second episode)."""
        answer = self._calls.call("POST", "episodes", {"episode_id": episode_id or uuid.uuid4().hex}, idempotent=True)
        return self._opened([answer["episode_id"]])[0]

    def start_episodes(self, count: int | None = None, *, episode_ids: Sequence[str] | None = None) -> list[str]:
        """Open `count` episodes with ids the server makes, or the named `episode_ids`.
        By count is not idempotent: a dropped connection there raises rather than retries."""
        if (count is None) == (episode_ids is None):
            raise ValueError("start_episodes: give count or episode_ids, not both")
        opened: list[str] = []
        if episode_ids is not None:
            for chunk in _chunks(list(episode_ids)):
                answer = self._calls.call("POST", "episodes", {"episode_ids": chunk}, idempotent=True)
                opened += self._opened(answer["episode_ids"])
            return opened
        if count < 1:
            raise ValueError(f"start_episodes: count must be >= 1, got {count}")
        for start in range(0, count, MAX_BATCH):
            body = {"count": min(MAX_BATCH, count - start)}
            opened += self._opened(self._calls.call("POST", "episodes", body, idempotent=False)["episode_ids"])
        return opened

    def _opened(self, ids: list[str]) -> list[str]:
        for eid in ids:
            self._episodes.setdefault(eid, _Episode())  # starting an open episode again keeps its steps
        return ids

    def episode(self, episode_id: str) -> dict:
        """The server's view: state, reason, length (steps stored), return."""
        return self._calls.call("GET", f"episodes/{episode_id}", idempotent=True)

    def step_of(self, episode_id: str) -> int:
        """The index of the episode's next step (the number of actions served or logged so far)."""
        return self._open(episode_id).step

    # ---- steps ---------------------------------------------------------------------------------
    def get_action(self, episode_id: str, obs: Any) -> int:
        """The policy's action for `obs`, the observation of the episode's next step."""
        ep = self._open(episode_id)
        body = {"obs": _row(obs), "episode_id": episode_id, "step": ep.step}
        if ep.step:
            body["reward"] = ep.reward
        answer = self._calls.call("POST", "act", body, idempotent=True)
        _check_steps([answer.get("step", ep.step)], [ep.step], "act")
        self.last_version, self.last_propensity = answer.get("version"), answer.get("propensity")
        ep.advance()
        return int(answer["action"])

    def get_actions(self, episode_ids: Sequence[str], obs_batch: Any) -> list[int]:
        """One action per episode, in one /act request (per MAX_BATCH rows)."""
        ids = list(episode_ids)
        rows = _rows(obs_batch, len(ids))
        eps = self._distinct(ids)
        actions: list[int] = []
        versions: list = []
        propensities: list = []
        for lo in range(0, len(ids), MAX_BATCH):
            chunk, part = ids[lo:lo + MAX_BATCH], eps[lo:lo + MAX_BATCH]
            steps = [ep.step for ep in part]
            body = {"obs": rows[lo:lo + MAX_BATCH], "episode_ids": chunk, "steps": steps,
                    "rewards": [ep.reward if ep.step else None for ep in part]}
            answer = self._calls.call("POST", "act", body, idempotent=True)
            _check_steps(answer.get("steps", steps), steps, "act")
            for ep in part:
                ep.advance()
            actions += answer["action"]
            versions += _per_row(answer.get("version"), len(chunk))
            propensities += _per_row(answer.get("propensity"), len(chunk))
        self.last_version, self.last_propensity = versions, propensities
        return [int(a) for a in actions]

    def log_action(self, episode_id: str, obs: Any, action: int, propensity: float | None = None) -> None:
        """Report an action the application chose itself for `obs` (off-policy); `propensity`:
        the probability its own policy chose it with, in (0, 1], or None if unknown."""
        ep = self._open(episode_id)
        body = {"episode_id": episode_id, "obs": _row(obs), "action": int(action), "propensity": propensity,
                "step": ep.step}
        if ep.step:
            body["reward"] = ep.reward
        answer = self._calls.call("POST", "log_action", body, idempotent=True)
        _check_steps([answer.get("step", ep.step)], [ep.step], "log_action")
        ep.advance()

    def log_returns(self, episode_id: str, reward: float) -> None:
        """Add `reward` to the episode's last step; it is sent with the episode's next request."""
        ep = self._open(episode_id)
        if ep.step == 0:
            raise ValueError(f"log_returns: episode {episode_id!r} has no step yet to reward")
        reward = float(reward)
        if not math.isfinite(reward):
            raise ValueError(f"log_returns: reward must be finite, got {reward}")
        ep.reward += reward

    def end_episode(self, episode_id: str, obs: Any = None, terminated: bool = True, truncated: bool = False) -> dict:
        """End the episode after its last step; `obs` is the observation after that step (needed
        when truncated: the value bootstraps from it). The answer: episode_id, return, length."""
        return self.end_episodes([episode_id], [obs], [terminated], [truncated])[0]

    def end_episodes(self, episode_ids: Sequence[str], obs_batch: Sequence[Any] | None = None,
                     terminated: bool | Sequence[bool] = True, truncated: bool | Sequence[bool] = False) -> list[dict]:
        """End several episodes in one request; `obs_batch` holds each one's final observation (or None)."""
        ids = list(episode_ids)
        n = len(ids)
        finals = [None] * n if obs_batch is None else list(obs_batch)
        term = [bool(terminated)] * n if isinstance(terminated, (bool, np.bool_)) else [bool(t) for t in terminated]
        trunc = [bool(truncated)] * n if isinstance(truncated, (bool, np.bool_)) else [bool(t) for t in truncated]
        if not len(finals) == len(term) == len(trunc) == n:
            raise ValueError(f"end_episodes: {n} episode ids need as many final observations, terminated and "
                             f"truncated flags; got {len(finals)}, {len(term)}, {len(trunc)}")
        for i, (te, tr) in enumerate(zip(term, trunc)):
            if te == tr:
                raise ValueError(f"end_episodes: episode {ids[i]!r}: exactly one of terminated, truncated must be true")
            if tr and finals[i] is None:
                raise ValueError(f"end_episodes: episode {ids[i]!r} is truncated: its final observation is needed")
        eps = self._distinct(ids)
        answers: list[dict] = []
        for lo in range(0, n, MAX_BATCH):
            part = eps[lo:lo + MAX_BATCH]
            body = {"episode_ids": ids[lo:lo + MAX_BATCH],
                    "rewards": [ep.reward if ep.step else None for ep in part],
                    "terminated": term[lo:lo + MAX_BATCH], "truncated": trunc[lo:lo + MAX_BATCH],
                    "final_obs": [None if f is None else _row(f) for f in finals[lo:lo + MAX_BATCH]],
                    "steps": [ep.step - 1 if ep.step else None for ep in part]}
            answers += self._calls.call("POST", "episodes/end", body, idempotent=True)["episodes"]
            for eid in body["episode_ids"]:
                del self._episodes[eid]
        return answers

    # ---- plumbing ------------------------------------------------------------------------------
    @property
    def retries(self) -> int:
        """Requests sent again so far (after a 429/503, a lost answer or a dropped connection)."""
        return self._calls.retries

    def _open(self, episode_id: str) -> _Episode:
        try:
            return self._episodes[episode_id]
        except KeyError:
            raise ValueError(f"episode {episode_id!r} is not open in this client: start_episode first") from None

    def _distinct(self, ids: list[str]) -> list[_Episode]:
        if len(set(ids)) != len(ids):
            raise ValueError("an episode may appear once per request: the episode ids repeat")
        return [self._open(eid) for eid in ids]

    def close(self) -> None:
        self._http.close()

    def __enter__(self) -> PolicyClient:
        return self

    def __exit__(self, *exc: Any) -> None:
        self.close()


def policy_url(url: str, policy_id: str | None) -> tuple[str, str]:
    """(the policy's base url, its id) from a server root plus id, or from the policy's own url."""
    url = url.rstrip("/")
    if not url.startswith(("http://", "https://")):
        raise ValueError(f"url must start with http:// or https://, got {url!r}")
    m = POLICY_PATH.match(url)
    if m:
        if policy_id is not None and policy_id != m.group("id"):
            raise ValueError(f"url names policy {m.group('id')!r} but policy_id is {policy_id!r}")
        return url, m.group("id")
    if not policy_id:
        raise ValueError(f"{url} is a server root: name the policy (policy_id), or give .../v1/policies/<id>")
    return f"{url}/v1/policies/{policy_id}", policy_id


def _row(obs: Any) -> list[float]:
    row = np.asarray(obs, dtype=np.float64).ravel()
    if not np.isfinite(row).all():
        raise ValueError(f"observation must be finite, got {row.tolist()}")
    return row.tolist()


def _rows(obs_batch: Any, n: int) -> list[list[float]]:
    rows = np.asarray(obs_batch, dtype=np.float64)
    if n == 0 or rows.shape[:1] != (n,):
        raise ValueError(f"need one observation per episode: {n} episode(s), observations of shape {rows.shape}")
    rows = rows.reshape(n, -1)
    if not np.isfinite(rows).all():
        raise ValueError(f"observations must be finite; row(s) {np.flatnonzero(~np.isfinite(rows).all(1)).tolist()} "
                         f"are not")
    return rows.tolist()


def _chunks(items: list) -> list[list]:
    return [items[lo:lo + MAX_BATCH] for lo in range(0, len(items), MAX_BATCH)]


def _per_row(value: Any, n: int) -> list:
    return list(value) if isinstance(value, list) else [value] * n


def _check_steps(answered: list, sent: list[int], route: str) -> None:
    """The server numbers the steps it answered; another numbering means the two disagree on the episode."""
    if list(answered) != sent:
        raise PolicyClientError(f"POST {route}: the server answered steps {answered} for steps {sent}")
