"""The run-level `serving` section: Serve's proxies, keys, TLS and exploration, shared by every loop that serves.

What one loop serves (its replicas, batching, route) is that loop's own `serving` group.
"""

from __future__ import annotations

from pydantic import Field, model_validator

from core.auth.keys import AuthSection
from core.auth.tls import TLSSection
from core.config.base import Section
from core.stats.exploration import ExplorationSection


class ServingSection(Section):
    enabled: bool = True  # start Serve: the gateway and every loop's routes
    host: str = "127.0.0.1"  # the HTTP proxy's address; beyond loopback API keys are on by default
    http_port: int = Field(default=8000, ge=1, le=65535)  # the HTTP proxy's port
    # Serve's gRPC proxy for the feedback apps: off unless asked for, since Ray's proxy binds
    # every interface ([::]:grpc_port) whatever `host` says.
    grpc: bool = False
    grpc_port: int = Field(default=9000, ge=1, le=65535)  # the gRPC proxy's port
    # Fractional CPUs keep Serve from starving actors and learners on small machines.
    replica_num_cpus: float = Field(default=0.1, gt=0)
    # GPUs per feedback-app replica (a fraction shares one GPU); > 0: it answers on CUDA in bf16.
    replica_num_gpus: float = Field(default=0.0, ge=0)
    route_prefix: str = "/"  # the gateway's prefix (/healthz, /v1/models)
    # How replicas pick the answer they serve, and per policy id (core/stats/exploration.py).
    exploration: ExplorationSection = Field(default_factory=ExplorationSection)
    exploration_by_policy: dict[str, ExplorationSection] = Field(default_factory=dict)  # by policy id, over `exploration`
    # API keys, scopes and per-key limits (core/auth/keys.py); on by default whenever a listener is
    # reachable beyond loopback (host, or grpc).
    auth: AuthSection = Field(default_factory=AuthSection)
    # HTTPS on the HTTP proxy: {certfile, keyfile} (core/auth/tls.py); None: plain HTTP.
    tls: TLSSection | None = None

    @model_validator(mode="after")
    def _no_open_grpc(self) -> "ServingSection":
        if self.enabled and self.grpc and self.auth.enabled is False and not self.auth.allow_open_grpc_unsafe:
            raise ValueError("serving.grpc with serving.auth.enabled: false would answer gRPC on every interface "
                             "([::], whatever serving.host) with no key: turn auth on (`evolve keys create`), "
                             "or set serving.auth.allow_open_grpc_unsafe: true")
        return self

    def exploration_for(self, policy_id: str) -> ExplorationSection:
        return self.exploration_by_policy.get(policy_id, self.exploration)
