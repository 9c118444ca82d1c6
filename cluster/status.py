"""`evolve status`: nodes, resources, Serve applications and the running loops of a cluster.

The loop table comes from each live run's status board (cluster.run_status): a
named actor the run's driver updates every progress interval.
"""

from __future__ import annotations

import logging
import time

import ray

from cluster.connect import ClusterConnectError, probe
from cluster.run_status import BOARD_PREFIX, format_table


def print_status(address: str, watch_s: float | None = None, namespace: str = "evolve") -> int:
    try:
        probe(address)
    except ClusterConnectError as exc:
        raise ClusterConnectError(f"{exc}; start one with `evolve run` or `ray start --head`, or pass --address") from None
    try:
        ray.init(address=address, namespace=namespace, logging_level=logging.ERROR, log_to_driver=False)
    except (ConnectionError, RuntimeError, ValueError) as exc:
        raise ClusterConnectError(
            f"no Ray cluster reachable at {address!r} ({' '.join(str(exc).split())[:200]}); "
            "start one with `evolve run` or `ray start --head`, or pass --address"
        ) from None
    try:
        while True:
            _print_once(namespace)
            if watch_s is None:
                break
            time.sleep(watch_s)  # --watch: the user stops it with Ctrl-C
            print()
    finally:
        ray.shutdown()
    return 0


def _print_once(namespace: str) -> None:
    """One listing: nodes, resources, Serve apps, the loop table."""
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
    _print_loops(namespace)


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


def _print_loops(namespace: str) -> None:
    snapshots = []
    for entry in ray.util.list_named_actors(all_namespaces=True):
        if entry.get("namespace") != namespace or not entry.get("name", "").startswith(BOARD_PREFIX):
            continue
        try:
            board = ray.get_actor(entry["name"], namespace=namespace)
            snapshot = ray.get(board.get.remote(), timeout=5)
        except Exception:  # the run ended between the listing and the call
            continue
        if snapshot:
            snapshots.append(snapshot)
    if not snapshots:
        print("loops: no run is going (`evolve run` starts one)")
        return
    for line in format_table(snapshots):
        print(line)


def _word(status: object) -> str:
    return str(getattr(status, "value", status))
