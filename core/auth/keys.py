"""API keys with scopes, a request rate and a feedback share per key (`serving.auth`).

A key is shown once, when `evolve keys create` makes it: `evk_<id>_<secret>`. The store
keeps its id, name, scopes and the SHA-256 of the whole key, never the key itself; keys
carry 192 random bits, so a fast hash is enough (a slow one guards guessable passwords).
The store is a JSON file (`serving.auth.keys_file`) or the same JSON in an environment
variable (`serving.auth.keys_env`), for deployments that mount secrets that way.

`Authenticator.authorize(key, scope, user)` answers what a route needs: the key's record and
who sent the request, or `AuthFailed` with the HTTP status (401 no or unknown key, 403 wrong
scope, 429 over the rate or the feedback share, with `Retry-After`) and a one-line reason.
Its limiter state is bounded: a sender's bucket is dropped once it has idled long enough to
refill (a fresh bucket would be the same), and at most `max_senders` buckets are kept.

Keys are required whenever a listener is reachable beyond loopback: `serving.host`, and
Serve's gRPC proxy, which binds every interface (`AuthSection.active`).
"""

from __future__ import annotations

import hashlib
import hmac
import json
import math
import os
import secrets
import tempfile
import time
from collections import Counter, OrderedDict, deque
from pathlib import Path
from typing import Literal, Mapping, Protocol

from pydantic import BaseModel, Field

from core.config.base import Section

Scope = Literal["predict", "feedback", "admin"]
SCOPES: tuple[str, ...] = ("predict", "feedback", "admin")
LOOPBACK = ("127.0.0.1", "localhost", "::1")
KEY_PREFIX = "evk"


class AuthSection(Section):
    # None: on whenever a listener is reachable beyond loopback: serving.host, or serving.grpc
    # (Serve's gRPC proxy binds every interface); off on 127.0.0.1 without gRPC.
    enabled: bool | None = None
    # gRPC with no key on every interface: only when this says so (else keys are on, or the run
    # is refused when `enabled` is false)
    allow_open_grpc_unsafe: bool = False
    keys_file: Path = Path("~/.evolve/keys.json")  # the key store `evolve keys create` writes
    # An environment variable holding the store's JSON instead of the file (when set, it wins).
    keys_env: str = "EVOLVE_API_KEYS"
    rate_per_s: float = Field(default=50.0, gt=0)  # requests per second per key, sustained
    burst: int = Field(default=100, ge=1)  # ...and at once
    # No key's feedback may exceed this share of the last `share_window` feedbacks a replica took;
    # 1 admits all (a deployment with one feedback client); the gate caps shares in its evidence anyway.
    max_feedback_share: float = Field(default=1.0, gt=0, le=1)
    share_window: int = Field(default=1000, ge=10)  # feedbacks the share is counted over
    # rate buckets kept at most (one per key, or per named user of a proxy key); the longest idle
    # goes first beyond it, and any bucket idle long enough to refill goes anyway
    max_senders: int = Field(default=100_000, ge=1)

    def active(self, host: str, grpc: bool = False) -> bool:
        if self.enabled is not None:
            return self.enabled
        return host not in LOOPBACK or (grpc and not self.allow_open_grpc_unsafe)

    def why_active(self, host: str, grpc: bool = False) -> str:
        if self.enabled:
            return "serving.auth.enabled"
        if host not in LOOPBACK:
            return f"serving.host {host} is beyond loopback"
        return "serving.grpc: Serve's gRPC proxy listens on every interface"


class KeyRecord(BaseModel):
    id: str
    name: str = ""
    scopes: list[Scope]
    sha256: str
    created: float
    revoked: bool = False
    # a service that speaks for many users (the run's own simulated clients): it names each
    # one in `x-evolve-client`, and the rate and feedback share apply per named user
    proxy: bool = False


class RevokeRefused(ValueError):
    """A revoke that could not take effect, and why."""


class AuthFailed(Exception):
    def __init__(self, status: int, reason: str, retry_after_s: float | None = None):
        super().__init__(reason)
        self.status, self.reason, self.retry_after_s = status, reason, retry_after_s

    def headers(self) -> dict[str, str]:
        return {} if self.retry_after_s is None else {"Retry-After": str(max(1, math.ceil(self.retry_after_s)))}


def _digest(key: str) -> str:
    return hashlib.sha256(key.encode()).hexdigest()


def key_id(key: str) -> str | None:
    """The id inside a key (`evk_<id>_<secret>`), or None for something that is not a key."""
    parts = key.split("_", 2)
    return parts[1] if len(parts) == 3 and parts[0] == KEY_PREFIX and parts[1] else None


class KeyStore:
    """The keys of one deployment: a JSON file, or the JSON in an environment variable."""

    def __init__(self, path: str | os.PathLike[str], env: str | None = None, snapshot: str | None = None,
                 extra: list[dict] | None = None):
        self.path = Path(path).expanduser()
        self.env = env
        # keys that live only as long as a run (its own traffic actors'): never written anywhere
        self.extra = [KeyRecord.model_validate(r) for r in extra or ()]
        # the driver's copy, for an app deployed without the run's key book (core/auth/key_book.py)
        # on a node without the file (the file, when there, wins)
        self.snapshot = snapshot

    def text(self) -> str:
        text = os.environ.get(self.env) if self.env else None
        if text is None:
            text = self.path.read_text() if self.path.exists() else self.snapshot or "[]"
        return text

    def records(self) -> dict[str, KeyRecord]:
        where = f"${self.env}" if self.overridden() else str(self.path)
        return parse_records(self.text(), self.extra, where)

    def overridden(self) -> str | None:
        """The environment variable whose JSON wins over the file, when it is set."""
        return self.env if self.env and self.env in os.environ else None

    def version(self) -> tuple:
        """Changes whenever the keys may have changed (a revoke takes effect without a restart)."""
        if self.env and self.env in os.environ:
            return ("env", os.environ[self.env])
        try:
            st = self.path.stat()
            return ("file", st.st_mtime_ns, st.st_size)
        except FileNotFoundError:
            return ("snapshot", self.snapshot)

    def create(self, scopes: list[str], name: str = "") -> tuple[KeyRecord, str]:
        records = self._file_records()
        record, key = mint(scopes, name, taken=records)
        records[record.id] = record
        self._save(records)
        return record, key

    def revoke(self, kid: str) -> KeyRecord:
        """Mark the key revoked in the file; RevokeRefused when the file is not what runs read."""
        env = self.overridden()
        if env:
            raise RevokeRefused(f"${env} is set and wins over {self.path}: a run started with it never reads the "
                                f"file, so this revoke would not take effect; mark {kid} revoked in ${env}'s JSON "
                                f"and restart the run, or unset ${env} and keep the keys in the file")
        records = self._file_records()
        if kid not in records:
            raise KeyError(f"no key with id {kid!r} in {self.path}")
        records[kid] = records[kid].model_copy(update={"revoked": True})
        self._save(records)
        return records[kid]

    def _file_records(self) -> dict[str, KeyRecord]:
        env, snapshot = self.env, self.snapshot
        self.env = self.snapshot = None  # create and revoke edit the file, whatever else says
        try:
            return self.records()
        finally:
            self.env, self.snapshot = env, snapshot

    def _save(self, records: dict[str, KeyRecord]) -> None:
        self.path.parent.mkdir(parents=True, exist_ok=True)
        body = json.dumps([r.model_dump() for r in records.values()], indent=2)
        fd, tmp = tempfile.mkstemp(dir=self.path.parent, prefix=".keys-")
        with os.fdopen(fd, "w") as f:  # mkstemp's file is 0600: only the owner reads the hashes
            f.write(body)
        os.replace(tmp, self.path)


def parse_records(text: str, extra: list[KeyRecord] = (), where: str = "key store") -> dict[str, KeyRecord]:
    """id -> record of a key store's JSON (plus `extra`), or ValueError naming `where`."""
    try:
        return {r.id: r for r in (*(KeyRecord.model_validate(x) for x in json.loads(text)), *extra)}
    except (ValueError, TypeError) as exc:
        raise ValueError(f"{where}: not an Evolve key store ({exc})") from exc


def mint(scopes: list[str], name: str = "", taken: Mapping[str, object] = {},
         proxy: bool = False) -> tuple[KeyRecord, str]:
    """A new key and its record (the only time the key itself exists in the clear)."""
    bad = sorted(set(scopes) - set(SCOPES))
    if bad or not scopes:
        raise ValueError(f"scopes must be some of {', '.join(SCOPES)}; got {', '.join(scopes) or 'none'}")
    kid = secrets.token_hex(4)
    while kid in taken:
        kid = secrets.token_hex(4)
    key = f"{KEY_PREFIX}_{kid}_{secrets.token_urlsafe(24)}"
    return KeyRecord(id=kid, name=name, scopes=sorted(set(scopes)), sha256=_digest(key), created=time.time(),
                     proxy=proxy), key


class _Bucket:
    def __init__(self, rate: float, burst: int, now: float):
        self.rate, self.burst, self.tokens, self.at = rate, burst, float(burst), now

    def take(self, now: float) -> float:
        """0 when a request may pass now, else the seconds until one may."""
        self.tokens = min(self.burst, self.tokens + (now - self.at) * self.rate)
        self.at = now
        if self.tokens >= 1:
            self.tokens -= 1
            return 0.0
        return (1 - self.tokens) / self.rate


class Keys(Protocol):
    """Where an Authenticator reads keys: a KeyStore, or a replica's copy of the run's key book."""

    def version(self) -> tuple: ...

    def records(self) -> dict[str, KeyRecord]: ...


class Authenticator:
    """What a replica asks before it answers: whose key, allowed this scope, within its limits."""

    def __init__(self, store: Keys, section: AuthSection, clock=time.monotonic):
        self.store, self.section, self.clock = store, section, clock
        self._seen: tuple | None = None
        self._records: dict[str, KeyRecord] = {}
        # sender -> bucket, least recently used first: the idle ones are dropped from the front
        self._buckets: OrderedDict[str, _Bucket] = OrderedDict()
        self._refill_s = section.burst / section.rate_per_s  # idle this long: the bucket is full again
        self._feedback: deque[str] = deque(maxlen=section.share_window)
        self._shares: Counter[str] = Counter()  # feedbacks per sender in the window; none kept at 0

    def authorize(self, key: str | None, scope: str | None, user: str | None = None) -> tuple[KeyRecord, str]:
        """The key's record and who the request is from: the key's id, or `id/user` for a proxy
        key that names its user. `scope` None: any valid key will do (the docs routes)."""
        if not key:
            raise AuthFailed(401, "an API key is required: send 'Authorization: Bearer <key>'")
        record = self._lookup(key)
        if record is None:
            raise AuthFailed(401, "unknown or revoked API key")
        if scope is not None and scope not in record.scopes and "admin" not in record.scopes:
            raise AuthFailed(403, f"key {record.id} lacks the {scope!r} scope (has {', '.join(record.scopes)})")
        sender = f"{record.id}/{user}" if record.proxy and user else record.id
        wait = self._bucket(sender).take(self.clock())
        if wait > 0:
            raise AuthFailed(429, f"key {sender} is over {self.section.rate_per_s:g} requests/s", wait)
        if scope == "feedback":
            self._check_share(sender)
        return record, sender

    def _bucket(self, sender: str) -> _Bucket:
        """The sender's bucket, most recently used now; buckets idle long enough to be full again
        are dropped (a new one is the same), and the longest idle beyond `max_senders`."""
        now, buckets = self.clock(), self._buckets
        while buckets:
            oldest = next(iter(buckets.values()))
            if now - oldest.at < self._refill_s and len(buckets) < self.section.max_senders:
                break
            buckets.popitem(last=False)
        bucket = buckets.pop(sender, None) or _Bucket(self.section.rate_per_s, self.section.burst, now)
        buckets[sender] = bucket
        return bucket

    def tracked_senders(self) -> int:
        """Rate buckets and feedback-share counts held now (bounded: see `_bucket`, `share_window`)."""
        return len(self._buckets) + len(self._shares)

    def _check_share(self, kid: str) -> None:
        window, cap = self._feedback, self.section.max_feedback_share
        if cap >= 1:
            return
        # only a full enough window says anything about shares: the first clients are not capped
        if len(window) >= window.maxlen // 10 and self._shares[kid] + 1 > cap * (len(window) + 1):
            raise AuthFailed(429, f"key {kid} sent over {cap:.0%} of recent feedback; others must send some first",
                             1.0)
        if len(window) == window.maxlen:
            gone = window[0]
            self._shares[gone] -= 1
            if self._shares[gone] <= 0:
                del self._shares[gone]  # a sender out of the window leaves nothing behind
        window.append(kid)
        self._shares[kid] += 1

    def _lookup(self, key: str) -> KeyRecord | None:
        version = self.store.version()
        if version != self._seen:
            self._records, self._seen = self.store.records(), version
        kid = key_id(key)
        record = self._records.get(kid) if kid else None
        if record is None or record.revoked or not hmac.compare_digest(record.sha256, _digest(key)):
            return None
        return record


def active_keys(store: KeyStore) -> int:
    return sum(not r.revoked for r in store.records().values())


def bearer(authorization: str | None, x_key: str | None = None) -> str | None:
    """The key of a request: `Authorization: Bearer <key>`, else the `x-evolve-key` header."""
    if authorization:
        kind, _, value = authorization.partition(" ")
        if kind.lower() == "bearer" and value.strip():
            return value.strip()
    return x_key or None
