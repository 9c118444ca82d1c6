"""A replica's API-key check (core/auth.py) for HTTP routes and gRPC calls.

`RouteGuard(settings)` is built in each replica from `guard_settings(...)`, which the driver
makes: the `serving.auth` section and a snapshot of the key store (a replica on a node
without the key file still knows the keys; where the file is, it is re-read on change).
`None` settings: auth is off, and the guard only names the client (the `x-evolve-client`
header), as before.

`client(headers, scope)` returns who sent the request — the key's id with auth on (`id/user`
for a proxy key, such as the run's own, naming its user in the client header), else the
client header — or raises `AuthFailed` (401 / 403 / 429, with `Retry-After` for 429).
"""

from __future__ import annotations

from typing import Any, Mapping

from core.auth import AuthFailed, Authenticator, AuthSection, KeyStore, active_keys, bearer, mint
from serving.join_rules import FeedbackRejected

KEY_HEADER = "x-evolve-key"
CLIENT_HEADER = "x-evolve-client"


class AuthNotReady(ValueError):
    """Auth is on but no key can pass: said before anything is served."""


def guard_settings(section: AuthSection, host: str) -> dict[str, Any] | None:
    """What replicas need (picklable), or None when auth is off for `host`."""
    if not section.active(host):
        return None
    store = KeyStore(section.keys_file, section.keys_env)
    where = f"${section.keys_env}" if store.version()[0] == "env" else str(store.path)
    try:
        keys = active_keys(store)
    except ValueError as exc:
        raise AuthNotReady(str(exc)) from exc
    if keys == 0:
        why = "serving.auth.enabled" if section.enabled else f"serving.host {host} is beyond loopback"
        raise AuthNotReady(f"API keys are required ({why}) but {where} has none: run `evolve keys create "
                           f"--scopes predict,feedback`, or set serving.auth.enabled: false")
    return {"section": section.model_dump(mode="json"), "snapshot": store.text()}


def with_run_key(settings: dict[str, Any] | None, name: str = "evolve-run") -> tuple[dict[str, Any] | None, str | None]:
    """The settings plus a key that lives as long as the run, for its own traffic and act clients
    (simulated users, each named in the client header): replicas know its hash; the key itself
    goes only to those actors."""
    if settings is None:
        return None, None
    record, key = mint(["predict", "feedback"], name, proxy=True)
    return {**settings, "internal": [*settings.get("internal", []), record.model_dump()]}, key


class RouteGuard:
    def __init__(self, settings: dict[str, Any] | None):
        self.auth: Authenticator | None = None
        if settings is not None:
            section = AuthSection.model_validate(settings["section"])
            store = KeyStore(section.keys_file, section.keys_env, snapshot=settings["snapshot"],
                             extra=settings.get("internal"))
            self.auth = Authenticator(store, section)

    @property
    def enabled(self) -> bool:
        return self.auth is not None

    def client(self, headers: Mapping[str, str], scope: str) -> str | None:
        """Who sent the request (raises AuthFailed when its key may not)."""
        if self.auth is None:
            return headers.get(CLIENT_HEADER) or None
        key = bearer(headers.get("authorization"), headers.get(KEY_HEADER))
        return self.auth.authorize(key, scope, headers.get(CLIENT_HEADER) or None)[1]

    def grpc_client(self, grpc_context: Any, scope: str) -> str | None:
        """The same for a gRPC call: `authorization` / `x-evolve-key` / `x-evolve-client` metadata."""
        return self.client(grpc_headers(grpc_context), scope)


def admit(guard: RouteGuard, headers: Mapping[str, str], scope: str) -> str | None:
    """Who sent the request, or FeedbackRejected (401 / 403 / 429, the routes' one refusal type)."""
    try:
        return guard.client(headers, scope)
    except AuthFailed as exc:
        raise FeedbackRejected(exc.status, exc.reason, exc.retry_after_s) from None


def grpc_headers(grpc_context: Any) -> dict[str, str]:
    """A gRPC call's metadata as lower-case headers."""
    metadata = grpc_context.invocation_metadata() if grpc_context is not None else ()
    return {k.lower(): v for k, v in metadata}
