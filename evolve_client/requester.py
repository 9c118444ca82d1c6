"""One request to a served policy's API, retried only where a retry cannot do anything twice.

What is safe to retry:
- 429 and 503: the server refused and changed nothing; it says when to come back (`Retry-After`).
- a connection that never reached the server (connect error, connect or pool timeout).
- 502, 504 and a connection dropped mid-request, when the request is idempotent: every mutating
  request of `PolicyClient` carries its step index (asking step t again answers what was served
  for t), and starting a *named* episode twice is a no-op. Starting episodes by `count` is not
  idempotent: a lost answer there may have opened episodes nobody knows the ids of, so it is
  an error at once.

Anything else (another 4xx, a 500) is raised at once with the server's `detail`. Pauses between
tries grow from `backoff_s` to `max_backoff_s`; a `Retry-After` is honoured up to
MAX_RETRY_AFTER_S.
"""

from __future__ import annotations

import json
import time
from dataclasses import dataclass
from typing import Any, Callable

import httpx

REFUSED_FOR_NOW = frozenset({429, 503})  # changed nothing; come back after Retry-After
ANSWER_LOST = frozenset({502, 504})  # a proxy lost the answer: the request may have been applied
NEVER_SENT = (httpx.ConnectError, httpx.ConnectTimeout, httpx.PoolTimeout)
MAX_RETRY_AFTER_S = 60.0
JSON_HEADERS = {"content-type": "application/json"}


class PolicyClientError(RuntimeError):
    """The policy server refused a request, or could not be reached; the message says why.

    `status` is the last HTTP status (None when no answer came), `detail` the server's reason,
    `tries` how many times the request was sent.
    """

    def __init__(self, message: str, status: int | None = None, detail: str | None = None, tries: int = 1):
        super().__init__(message)
        self.status, self.detail, self.tries = status, detail, tries


@dataclass(frozen=True)
class RetryPolicy:
    max_retries: int = 5  # tries after the first
    backoff_s: float = 0.1  # the first pause; it doubles each try
    max_backoff_s: float = 5.0

    def __post_init__(self) -> None:
        if self.max_retries < 0 or self.backoff_s < 0 or self.max_backoff_s < self.backoff_s:
            raise ValueError(f"retry policy: need max_retries >= 0 and 0 <= backoff_s <= max_backoff_s, got {self}")


class Requester:
    def __init__(self, client: httpx.Client, policy: RetryPolicy, sleep: Callable[[float], Any] = time.sleep):
        self.client, self.policy, self.sleep = client, policy, sleep
        self.tries = 0  # every request sent, retries included
        self._urls: dict[str, httpx.URL] = {}  # the POST routes' URLs, parsed once
        self.retries = 0

    def call(self, method: str, path: str, body: dict | None = None, *, idempotent: bool) -> Any:
        """The answer's JSON; PolicyClientError when refused or when retrying is unsafe or gives up."""
        content = None if body is None else json.dumps(body, separators=(",", ":"), allow_nan=False)
        what, pause, tries = f"{method} {path}", self.policy.backoff_s, 0
        while True:
            tries += 1
            self.tries += 1
            wait, status, detail = None, None, None
            try:
                reply = self.client.request(method, self._url(method, path), content=content,
                                            headers=JSON_HEADERS if content is not None else None)
            except NEVER_SENT as exc:
                why = f"unreachable ({type(exc).__name__}: {exc})"
            except httpx.TransportError as exc:
                why = f"connection dropped ({type(exc).__name__}: {exc})"
                if not idempotent:
                    raise PolicyClientError(f"{what}: {why}; not retried, since the request may have been "
                                            f"applied and is not idempotent", tries=tries) from exc
            else:
                status = reply.status_code
                if status < 300:
                    return reply.json()
                detail = _detail(reply)
                why = f"{status} {detail}"
                if status in REFUSED_FOR_NOW:
                    wait = _retry_after(reply)
                elif status in ANSWER_LOST and not idempotent:
                    raise PolicyClientError(f"{what}: {why}; not retried, since the request may have been applied "
                                            f"and is not idempotent", status, detail, tries)
                elif status not in ANSWER_LOST:
                    raise PolicyClientError(f"{what}: {why}", status, detail, tries)
            if tries > self.policy.max_retries:
                raise PolicyClientError(f"{what}: gave up after {tries} tries; the last: {why}", status, detail, tries)
            self.retries += 1
            self.sleep(min(wait, MAX_RETRY_AFTER_S) if wait is not None else pause)
            pause = min(pause * 2, self.policy.max_backoff_s)

    def _url(self, method: str, path: str) -> httpx.URL:
        url = self._urls.get(path)
        if url is None:
            url = self.client.base_url.join(path)
            if method == "POST":
                self._urls[path] = url
        return url


def _detail(reply: httpx.Response) -> str:
    """The server's one-line reason: `detail` of a JSON error body, else the start of the body."""
    try:
        detail = reply.json().get("detail")
    except (ValueError, AttributeError):
        detail = None
    if detail is None:
        return reply.text[:200] or reply.reason_phrase
    return detail if isinstance(detail, str) else json.dumps(detail)[:200]


def _retry_after(reply: httpx.Response) -> float | None:
    """Retry-After in seconds; None when absent or not a number of seconds."""
    try:
        return max(0.0, float(reply.headers["retry-after"]))
    except (KeyError, ValueError):
        return None
