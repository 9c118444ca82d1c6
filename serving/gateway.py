"""The HTTP gateway every run deploys: health and the model catalog.

A thin `@serve.deployment` shell over `serving.catalog`; the loops add their
routes (predict, feedback, act) as their own deployments. With `serving.auth` on,
the catalog (lineage, metrics) needs an `admin` key, and the docs routes any key.
`deploy_gateway` starts Serve's proxies: HTTPS with `serving.tls` (core/auth/tls.py).
"""

# no `from __future__ import annotations`: FastAPI must see `Request` itself, or it reads
# `request` as a query parameter (422)

import logging
import time
from dataclasses import dataclass

from fastapi import HTTPException, Request
from fastapi_offline import FastAPIOffline
from ray import serve

from core.config.serving import ServingSection
from core.storage.registry import PolicyRegistry
from serving.auth_guard import RouteGuard, docs_need_key
from serving.catalog import describe_policies

APP_NAME = "evolve"
# Swagger UI's assets from the fastapi-offline package, not a CDN: /docs renders offline
api = FastAPIOffline(title="Evolve", description="Keeps models learning after they ship.", version="0.1.0")
docs_need_key(api)


@serve.deployment(name="gateway", ray_actor_options={"num_cpus": 0.1})
@serve.ingress(api)
class Gateway:
    def __init__(self, registry_uri: str, auth: dict | None = None):
        self._registry = PolicyRegistry(registry_uri)
        self._guard = RouteGuard(auth)
        self._started = time.time()

    @api.get("/healthz")
    def healthz(self) -> dict:
        return {"status": "ok", "uptime_s": round(time.time() - self._started, 3)}

    @api.get("/v1/models")
    def models(self, request: Request) -> dict:
        if self._guard.enabled:
            from core.auth.keys import AuthFailed

            try:
                self._guard.client(request.headers, "admin")
            except AuthFailed as exc:
                raise HTTPException(exc.status, detail=exc.reason, headers=exc.headers()) from None
        return describe_policies(self._registry)


@dataclass(frozen=True)
class Endpoints:
    http: str
    grpc: str | None = None


def deploy_gateway(cfg: ServingSection, registry_uri: str, grpc_options: dict | None = None,
                   auth: dict | None = None) -> Endpoints:
    """Start Serve's HTTP proxy on cfg.host:cfg.http_port, HTTPS with cfg.tls (and its gRPC proxy
    when `grpc_options` names servicers: plaintext, Serve has no TLS for it) and deploy the gateway app."""
    logging.getLogger("ray.serve").setLevel(logging.WARNING)
    quiet = {"log_level": "WARNING"}  # Serve's INFO lines would drown the progress display
    extra = {"grpc_options": grpc_options} if grpc_options else {}
    tls = cfg.tls.http_options() if cfg.tls is not None else {}
    serve.start(http_options={"host": cfg.host, "port": cfg.http_port, **tls}, logging_config=quiet, **extra)
    app = Gateway.options(ray_actor_options={"num_cpus": cfg.replica_num_cpus}).bind(registry_uri, auth)
    serve.run(app, name=APP_NAME, route_prefix=cfg.route_prefix, logging_config=quiet)
    grpc = f"{cfg.host}:{grpc_options['port']}" if grpc_options else None
    scheme = "https" if tls else "http"
    return Endpoints(http=f"{scheme}://{cfg.host}:{cfg.http_port}{cfg.route_prefix.rstrip('/')}", grpc=grpc)


def undeploy() -> None:
    serve.delete(APP_NAME)
