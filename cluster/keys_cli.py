"""`evolve keys create | list | revoke`: the API keys of a deployment (core/auth/keys.py).

A running run's replicas follow the keys file on the driver's node through the run's key
book (cluster/key_service.py): a revoke there reaches all of them within seconds. When the
`keys_env` variable is set it wins over the file, so a revoke in the file would change
nothing: it is refused, saying so.
"""

from __future__ import annotations

import sys
import time

from cluster.errors import UserError
from core.auth.keys import SCOPES, AuthSection, KeyStore, RevokeRefused

DEFAULT_FILE = "~/.evolve/keys.json"
DEFAULT_ENV = AuthSection().keys_env


def create(path: str, scopes: str, name: str, env: str = DEFAULT_ENV) -> int:
    store = KeyStore(path, env)
    try:
        record, key = store.create([s.strip() for s in scopes.split(",") if s.strip()], name=name)
    except ValueError as exc:
        raise UserError(str(exc)) from exc
    print(key)
    print(f"# id {record.id}, scopes {','.join(record.scopes)}; shown once, only its hash is kept in {store.path}")
    if store.overridden():
        print(f"evolve: note: ${env} is set and wins over {store.path}: a run started with it will not know this "
              f"key", file=sys.stderr)
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


def revoke(path: str, kid: str, env: str = DEFAULT_ENV) -> int:
    try:
        record = KeyStore(path, env).revoke(kid)
    except RevokeRefused as exc:
        raise UserError(f"revoke refused: {exc}") from exc
    except KeyError as exc:
        raise UserError(exc.args[0]) from exc
    print(f"revoked {record.id} ({record.name or 'no name'}); a run whose driver reads this file refuses it on "
          f"every replica within a few seconds")
    return 0
