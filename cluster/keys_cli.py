"""`evolve keys create | list | revoke`: the API keys of a deployment (core/auth.py)."""

from __future__ import annotations

import time

from cluster.errors import UserError
from core.auth import SCOPES, KeyStore

DEFAULT_FILE = "~/.evolve/keys.json"


def create(path: str, scopes: str, name: str) -> int:
    try:
        record, key = KeyStore(path).create([s.strip() for s in scopes.split(",") if s.strip()], name=name)
    except ValueError as exc:
        raise UserError(str(exc)) from exc
    print(key)
    print(f"# id {record.id}, scopes {','.join(record.scopes)}; shown once, only its hash is kept in "
          f"{KeyStore(path).path}")
    return 0


def list_keys(path: str) -> int:
    store = KeyStore(path)
    try:
        records = store.records()
    except ValueError as exc:
        raise UserError(str(exc)) from exc
    if not records:
        print(f"no keys in {store.path}; create one: evolve keys create --scopes {','.join(SCOPES[:2])}")
        return 0
    print(f"{'id':<10} {'name':<16} {'scopes':<24} {'created (UTC)':<20} state")
    for r in sorted(records.values(), key=lambda r: r.created):
        created = time.strftime("%Y-%m-%d %H:%M:%S", time.gmtime(r.created))
        print(f"{r.id:<10} {r.name[:16]:<16} {','.join(r.scopes):<24} {created:<20} "
              f"{'revoked' if r.revoked else 'active'}")
    return 0


def revoke(path: str, kid: str) -> int:
    try:
        record = KeyStore(path).revoke(kid)
    except KeyError as exc:
        raise UserError(exc.args[0]) from exc
    print(f"revoked {record.id} ({record.name or 'no name'}); running replicas refuse it from their next request")
    return 0
