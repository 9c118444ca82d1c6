"""Start an embedded local Ray cluster, or join one started by `ray up` / `ray start`."""

from __future__ import annotations

import logging
import os
import socket
from dataclasses import dataclass

import ray

from cluster.errors import UserError
from core.config.run import ClusterSection

log = logging.getLogger(__name__)


class ClusterConnectError(UserError):
    """Ray could not be started or reached."""


TRAIN_POLL_ENV = "RAY_TRAIN_HEALTH_CHECK_INTERVAL_S"
# The raylet starts at most this many worker processes at once (Ray's default: the CPU count)
# and warns each time the workers started reach a further multiple of it.  A run starts
# a few dozen small actors, which on a small machine is many multiples of the CPU count, and
# those warnings need no action; a higher cap silences them without slowing the start.
STARTUP_CONCURRENCY_ENV = "RAY_worker_maximum_startup_concurrency"


@dataclass(frozen=True)
class ClusterHandle:
    address: str  # GCS address (or ray:// URL)
    dashboard_url: str | None
    embedded: bool
    auth_mode: str


def connect(cfg: ClusterSection, address: str | None = None, log_to_driver: bool = True) -> ClusterHandle:
    """`address` (or cfg.address) None starts an embedded cluster; else join that cluster.
    `log_to_driver=False`: workers' output stays in the session's log files (a quiet terminal)."""
    address = address if address is not None else cfg.address
    if ray.is_initialized():
        raise ClusterConnectError("Ray is already initialized in this process")
    try:
        if address is None:
            # Ray Train's controller steps through its start-up states once per health-check
            # interval: a shorter one than Ray's default brings a learner's first update sooner.
            # The embedded cluster's processes inherit this; an explicit setting wins.
            os.environ.setdefault(TRAIN_POLL_ENV, "0.5")
            os.environ.setdefault(STARTUP_CONCURRENCY_ENV, "8")
            ctx = ray.init(
                num_cpus=cfg.num_cpus,
                num_gpus=cfg.num_gpus,
                include_dashboard=cfg.include_dashboard,
                dashboard_host=cfg.dashboard_host,
                dashboard_port=cfg.dashboard_port,
                namespace=cfg.namespace,
                log_to_driver=log_to_driver,
                configure_logging=True,
                logging_level=logging.WARNING,
            )
        else:
            probe(address)
            ctx = ray.init(address=address, namespace=cfg.namespace, logging_level=logging.WARNING,
                           log_to_driver=log_to_driver)
    except ConnectionError as exc:
        where = address or "a new local cluster"
        raise ClusterConnectError(f"cannot reach Ray at {where}: {_one_line(exc)}") from None
    except (RuntimeError, ValueError) as exc:
        raise ClusterConnectError(f"cannot start or join Ray ({address or 'embedded'}): {_one_line(exc)}") from None
    dashboard = getattr(ctx, "dashboard_url", None) or None
    if dashboard and not dashboard.startswith("http"):
        dashboard = f"http://{dashboard}"
    gcs = ctx.address_info.get("gcs_address") if hasattr(ctx, "address_info") else None
    return ClusterHandle(
        address=gcs or str(address),
        dashboard_url=dashboard,
        embedded=address is None,
        auth_mode=os.environ.get("RAY_AUTH_MODE", "token (Ray default)"),
    )


def probe(address: str, timeout_s: float = 3.0) -> str:
    """Resolve `address` ("auto" or host:port) and check something listens there.

    Ray itself retries an unreachable GCS for minutes; a CLI should say
    "nothing there" in seconds.  ray:// client addresses are left to Ray.
    """
    if address.startswith("ray://"):
        return address
    try:
        from ray._private.services import canonicalize_bootstrap_address

        resolved = canonicalize_bootstrap_address(address)
    except Exception as exc:  # private helper: any failure means we cannot resolve
        raise ClusterConnectError(f"cannot resolve Ray address {address!r}: {_one_line(exc)}") from None
    if not resolved:
        raise ClusterConnectError(f"no running Ray cluster found for address {address!r}")
    host, _, port = resolved.rpartition(":")
    try:
        with socket.create_connection((host, int(port)), timeout=timeout_s):
            return resolved
    except (OSError, ValueError) as exc:
        raise ClusterConnectError(f"nothing answers at {resolved} ({exc.__class__.__name__}: {exc})") from None


def disconnect() -> None:
    if ray.is_initialized():
        ray.shutdown()


def resource_report() -> dict[str, dict[str, float]]:
    """Total and available resources of the connected cluster."""
    return {"total": dict(ray.cluster_resources()), "available": dict(ray.available_resources())}


def _one_line(exc: BaseException) -> str:
    return " ".join(str(exc).split())[:300]
