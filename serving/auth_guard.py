"""A replica's API-key check (core/auth/keys.py) for HTTP routes and gRPC calls.

`RouteGuard(settings)` is built in each replica from `guard_settings(...)`, which the driver
makes: the `serving.auth` section and a snapshot of the key store. In a run the settings also
name the run's key book (cluster/key_service.py): the replica follows it every second, so a
revoke or a new key reaches every replica on every node, and no replica reads its own node's
disk. Without a book (an app deployed on its own) the guard reads the key file where it is,
else the snapshot. `None` settings: auth is off, and the guard only names the client (the
`x-evolve-client` header), as before.

`docs_need_key(app)` puts the same check in front of an app's docs routes (/docs, /redoc,
/openapi.json): any valid key opens them when keys are on.

`client(headers, scope)` returns who sent the request — the key's id with auth on (`id/user`
for a proxy key, such as the run's own, naming its user in the client header), else the
client header — or raises `AuthFailed` (401 / 403 / 429, with `Retry-After` for 429).
"""

from __future__ import annotations

import weakref
from typing import Any, Callable, Mapping

from starlette.responses import JSONResponse
from starlette.routing import Route, get_route_path

from core.auth.keys import LOOPBACK, AuthFailed, Authenticator, AuthSection, KeyStore, active_keys, bearer, mint
from core.auth.key_book import FollowedKeys, News
from serving.join_rules import FeedbackRejected

KEY_HEADER = "x-evolve-key"
CLIENT_HEADER = "x-evolve-client"


class AuthNotReady(ValueError):
    """Auth is on but no key can pass: said before anything is served."""


def guard_settings(section: AuthSection, host: str, grpc: bool = False) -> dict[str, Any] | None:
    """What replicas need (picklable), or None when auth is off for `host` (and `grpc`: Serve's
    gRPC proxy, which listens on every interface, is opened)."""
    if not section.active(host, grpc):
        return None
    store = KeyStore(section.keys_file, section.keys_env)
    where = f"${section.keys_env}" if store.version()[0] == "env" else str(store.path)
    try:
        keys = active_keys(store)
    except ValueError as exc:
        raise AuthNotReady(str(exc)) from exc
    if keys == 0:
        way_out = ("set serving.auth.allow_open_grpc_unsafe: true" if section.enabled is None and host in LOOPBACK
                   else "set serving.auth.enabled: false")
        raise AuthNotReady(f"API keys are required ({section.why_active(host, grpc)}) but {where} has none: run "
                           f"`evolve keys create --scopes predict,feedback`, or {way_out}")
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
        global _replica_guard
        self.auth: Authenticator | None = None
        self.keys: FollowedKeys | None = None
        if settings is not None:
            section = AuthSection.model_validate(settings["section"])
            book = settings.get("book")
            if book:
                self.keys = FollowedKeys(book_fetch(book["name"], book["namespace"]), settings["snapshot"],
                                         extra=settings.get("internal"), every_s=book.get("every_s", 1.0)).start()
                self.auth = Authenticator(self.keys, section)
            else:
                store = KeyStore(section.keys_file, section.keys_env, snapshot=settings["snapshot"],
                                 extra=settings.get("internal"))
                self.auth = Authenticator(store, section)
        _replica_guard = weakref.ref(self)  # one Serve replica per process: its docs routes ask this guard

    @property
    def enabled(self) -> bool:
        return self.auth is not None

    def close(self) -> None:
        if self.keys is not None:
            self.keys.close()

    def client(self, headers: Mapping[str, str], scope: str | None) -> str | None:
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


def book_fetch(name: str, namespace: str | None, timeout_s: float = 5.0) -> Callable[[int], News]:
    """Ask the run's key book (a named actor) for news since a version."""
    import ray

    handle = None

    def fetch(version: int) -> News:
        nonlocal handle
        if handle is None:
            handle = ray.get_actor(name, namespace=namespace)
        return ray.get(handle.since.remote(version), timeout=timeout_s)

    return fetch


_replica_guard: Callable[[], RouteGuard | None] = lambda: None


class DocsNeedKey:
    """ASGI middleware: the docs routes answer only to a valid key (any scope) when keys are on."""

    def __init__(self, app: Any, paths: frozenset[str]):
        self.app, self.paths = app, paths

    async def __call__(self, scope: dict, receive: Any, send: Any) -> None:
        guard = _replica_guard()
        if scope["type"] == "http" and guard is not None and guard.enabled and get_route_path(scope) in self.paths:
            headers = {k.decode("latin-1").lower(): v.decode("latin-1") for k, v in scope["headers"]}
            try:
                guard.client(headers, None)
            except AuthFailed as exc:
                await JSONResponse({"detail": exc.reason}, exc.status, headers=exc.headers())(scope, receive, send)
                return
        await self.app(scope, receive, send)


def docs_need_key(app: Any) -> None:
    """Guard `app`'s docs routes (/docs, /redoc, their oauth2 redirect, /openapi.json) with the
    replica's RouteGuard; the routes the app declares itself are guarded where they are."""
    paths = frozenset(r.path for r in app.routes if isinstance(r, Route) and not r.include_in_schema)
    app.add_middleware(DocsNeedKey, paths=paths | {app.openapi_url})
