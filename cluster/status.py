"""`evolve status`: nodes, resources and Serve applications of a running cluster."""

from __future__ import annotations

import logging

import ray

from cluster.connect import ClusterConnectError, probe


def print_status(address: str) -> int:
    try:
        probe(address)
    except ClusterConnectError as exc:
        raise ClusterConnectError(f"{exc}; start one with `evolve run` or `ray start --head`, or pass --address") from None
    try:
        ray.init(address=address, logging_level=logging.ERROR, log_to_driver=False)
    except (ConnectionError, RuntimeError, ValueError) as exc:
        raise ClusterConnectError(
            f"no Ray cluster reachable at {address!r} ({' '.join(str(exc).split())[:200]}); "
            "start one with `evolve run` or `ray start --head`, or pass --address"
        ) from None
    try:
        nodes = [n for n in ray.nodes() if n.get("Alive")]
        total, free = ray.cluster_resources(), ray.available_resources()
        print(f"cluster: Ray {ray.__version__}, {len(nodes)} node(s) alive")
        for node in nodes:
            res = {k: v for k, v in node.get("Resources", {}).items() if not k.startswith("node:") and k != "object_store_memory" and k != "memory"}
            print(f"  node {node['NodeManagerAddress']}: " + ", ".join(f"{k}={v:g}" for k, v in sorted(res.items())))
        print("resources in use: " + ", ".join(
            f"{k} {total[k] - free.get(k, 0):g}/{total[k]:g}" for k in sorted(total) if k in ("CPU", "GPU") or not k.startswith(("node:", "memory", "object_store"))
        ))
        _print_serve()
    finally:
        ray.shutdown()
    return 0


def _print_serve() -> None:
    from ray import serve

    try:
        apps = serve.status().applications
    except Exception:  # no Serve controller on this cluster
        print("serve: not running")
        return
    if not apps:
        print("serve: running, no applications")
    for name, app in apps.items():
        deployments = ", ".join(f"{d}={_word(s.status)}" for d, s in app.deployments.items())
        print(f"serve app {name}: {_word(app.status)} ({deployments})")


def _word(status: object) -> str:
    return str(getattr(status, "value", status))
