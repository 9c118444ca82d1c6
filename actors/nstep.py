"""N-step transitions from per-step arrays of a vector env: what a rollout actor writes to replay."""

from __future__ import annotations

from collections import deque

import numpy as np


class NStep:
    """Turns per-step arrays of E envs into n-step transitions (n=1: plain transitions).

    The window holds the last n steps; once full, it emits one transition per env
    starting at the oldest step: discounted rewards up to the first episode end in
    the window, the observation after that step, and the bootstrap discount
    gamma**k for the k rewards folded in (k < n when an episode ended first: a row
    cut by a time limit bootstraps from its final observation with gamma**k, not gamma**n).
    Rows are (obs, action, return, next_obs, terminated, truncated, discount).
    """

    def __init__(self, n: int, gamma: float):
        self.n, self.gamma = n, gamma
        self.window: deque[tuple[np.ndarray, ...]] = deque(maxlen=n)
        self._ended: deque[bool] = deque(maxlen=n)  # did any env end at that step
        self._tags: deque[int] = deque(maxlen=n)  # push_many's per-step tag (the acting policy version)
        self._discounts = [gamma**j for j in range(n)]

    def push(self, obs, action, reward, next_obs, terminated, truncated) -> tuple[np.ndarray, ...] | None:
        self.window.append((obs, action, reward, next_obs, terminated, truncated))
        if self.n == 1:
            return (*self.window[0], np.full(len(action), self.gamma, np.float32))
        self._ended.append(bool(terminated.any() or truncated.any()))
        if len(self.window) < self.n:
            return None
        obs0, act0 = self.window[0][0], self.window[0][1]
        E = len(act0)
        if not any(self._ended):  # the common case: no episode ends inside the window
            ret = np.asarray(self.window[0][2], dtype=np.float32).copy()
            for j in range(1, self.n):
                ret += (self._discounts[j] * self.window[j][2]).astype(np.float32, copy=False)
            return obs0, act0, ret, self.window[-1][3], np.zeros(E, bool), np.zeros(E, bool), \
                np.full(E, self.gamma**self.n, np.float32)
        ret = np.zeros(E, dtype=np.float32)
        alive = np.ones(E, dtype=bool)
        nxt, term, trunc = self.window[-1][3].copy(), np.zeros(E, bool), np.zeros(E, bool)
        disc = np.full(E, self.gamma**self.n, np.float32)
        for j, (_, _, r, nobs, te, tr) in enumerate(self.window):
            ret += np.where(alive, (self.gamma**j) * r, 0.0).astype(np.float32)
            ends = alive & (te | tr)
            nxt[ends], term[ends], trunc[ends] = nobs[ends], te[ends], tr[ends]
            disc[ends] = self.gamma ** (j + 1)
            alive &= ~(te | tr)
        return obs0, act0, ret, nxt, term, trunc, disc

    def push_many(self, obs, action, reward, next_obs, terminated, truncated,
                  tags: np.ndarray | None = None) -> tuple[np.ndarray, ...] | None:
        """`push` for T steps at once (arrays [T, E, ...]); the transitions the T pushes
        would have emitted, concatenated in the same order (rows [M*E, ...]), or None.

        `tags` ([T] ints, e.g. the policy version that acted at each step) come back as an
        8th array: each row gets the tag of its first step, carried steps included."""
        T = len(action)
        steps = [(obs[t], action[t], reward[t], next_obs[t], terminated[t], truncated[t]) for t in range(T)]
        step_tags = np.zeros(T, np.int64) if tags is None else np.asarray(tags, np.int64)
        if self.n == 1:
            self.window.extend(steps)
            out = obs.reshape(T * obs.shape[1], *obs.shape[2:]), action.reshape(-1), reward.reshape(-1), \
                next_obs.reshape(T * next_obs.shape[1], *next_obs.shape[2:]), terminated.reshape(-1), \
                truncated.reshape(-1), np.full(action.size, self.gamma, np.float32)
            return out if tags is None else (*out, np.repeat(step_tags, action.shape[1]))
        carry = list(self.window)[-(self.n - 1):]  # steps whose transitions are not out yet
        carry_tags = list(self._tags)[-(self.n - 1):] if carry else []
        self._tags.extend(step_tags.tolist())
        self.window.extend(steps)
        self._ended.extend((terminated | truncated).any(axis=1).tolist())
        if carry:
            cols = [np.concatenate([np.stack([c[i] for c in carry]), new])
                    for i, new in enumerate((obs, action, reward, next_obs, terminated, truncated))]
        else:
            cols = [obs, action, reward, next_obs, terminated, truncated]
        O, A, R, N, TE, TR = cols
        M = len(A) - self.n + 1  # windows that are full: their first step is emitted
        if M < 1:
            return None
        E = A.shape[1]
        ret = np.zeros((M, E), dtype=np.float32)
        alive = np.ones((M, E), dtype=bool)
        nxt, term, trunc = N[self.n - 1:self.n - 1 + M].copy(), np.zeros((M, E), bool), np.zeros((M, E), bool)
        disc = np.full((M, E), self.gamma**self.n, np.float32)
        for j in range(self.n):  # the loop of `push`, over all M windows at once
            r, nobs, te, tr = R[j:j + M], N[j:j + M], TE[j:j + M], TR[j:j + M]
            ret += np.where(alive, self._discounts[j] * r, 0.0).astype(np.float32)
            ends = alive & (te | tr)
            nxt[ends], term[ends], trunc[ends] = nobs[ends], te[ends], tr[ends]
            disc[ends] = self.gamma ** (j + 1)
            alive &= ~(te | tr)
        flat = M * E
        out = O[:M].reshape(flat, *O.shape[2:]), A[:M].reshape(flat), ret.reshape(flat), \
            nxt.reshape(flat, *nxt.shape[2:]), term.reshape(flat), trunc.reshape(flat), disc.reshape(flat)
        if tags is None:
            return out
        all_tags = np.concatenate([np.asarray(carry_tags, np.int64), step_tags])
        return (*out, np.repeat(all_tags[:M], E))
