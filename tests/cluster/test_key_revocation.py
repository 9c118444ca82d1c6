"""A key revoked during a run reaches Serve replicas on two nodes (separate raylets) within 10 s.

    head     1 CPU   GCS, this test's driver, the run's key book (cluster/key_service.py)
    node-a   1 CPU   replica-slot: 1      one replica
    node-b   1 CPU   replica-slot: 1      the other

The key file lives beside the driver only, as on a cluster whose other nodes never see it.
The book is started the way `evolve run` starts it; each replica builds the RouteGuard every
app builds and answers which node it is on and what its guard said. `evolve keys revoke`
edits the file; from then on each replica's answers are recorded until both refuse.
"""

from __future__ import annotations

import os
import shutil
import sys
import tempfile
import threading
import time
from pathlib import Path

import pytest
import ray
from ray import serve

from cluster.cli import main as evolve
from cluster.key_service import start_key_service
from core.auth.keys import AuthFailed, AuthSection, KeyStore, key_id
from serving.auth_guard import RouteGuard, guard_settings
from tests.cluster.harness import AUTH_TOKEN, LocalCluster, cluster_env, wait_until

pytestmark = pytest.mark.cluster
REPO = Path(__file__).resolve().parents[2]
BOUND_S = 10.0
UNSET_ENV = "EVOLVE_CLUSTER_KEYS_UNSET"


@serve.deployment(num_replicas=2, max_replicas_per_node=1,
                  ray_actor_options={"num_cpus": 0, "resources": {"replica-slot": 1}})
class GuardProbe:
    """A replica with the guard every app builds; it says where it runs and what the guard said."""

    def __init__(self, auth: dict):
        self.guard = RouteGuard(auth)
        self.node = ray.get_runtime_context().get_node_id()

    def check(self, key: str) -> tuple[float, str, int]:
        """(when the guard answered: one machine's monotonic clock, node, status)."""
        try:
            self.guard.client({"authorization": f"Bearer {key}"}, "predict")
            status = 200
        except AuthFailed as exc:
            status = exc.status
        return time.monotonic(), self.node, status


@pytest.fixture(scope="module")
def cluster():
    temp = Path(tempfile.mkdtemp(prefix="evk", dir="/tmp"))  # short: Ray's socket paths have a length limit
    c = LocalCluster(temp, cluster_env(), REPO)
    token = os.environ.get("RAY_AUTH_TOKEN")
    os.environ["RAY_AUTH_TOKEN"] = AUTH_TOKEN
    try:
        c.start_head(num_cpus=1)
        c.add_worker("node-a", 1, {"replica-slot": 1})
        c.add_worker("node-b", 1, {"replica-slot": 1})
        ray.init(address=c.address, namespace="evolve", logging_level="WARNING", log_to_driver=False)
        ray.cloudpickle.register_pickle_by_value(sys.modules[__name__])  # the probe travels by value
        by_port = {n["NodeManagerPort"]: n["NodeID"] for n in ray.nodes() if n["Alive"]}
        for node in c.nodes:
            node.node_id = by_port[node.node_manager_port]
        yield c
    finally:
        try:
            serve.shutdown()
        except Exception:
            pass
        ray.shutdown()
        c.stop()
        shutil.rmtree(temp, ignore_errors=True)
        if token is None:
            os.environ.pop("RAY_AUTH_TOKEN", None)
        else:
            os.environ["RAY_AUTH_TOKEN"] = token


class Asker(threading.Thread):
    """Asks the replicas about one key, a few calls at a time; keeps (time, node, status)."""

    def __init__(self, handle, key: str):
        super().__init__(daemon=True)
        self.handle, self.key, self.answers, self.stop = handle, key, [], threading.Event()

    def run(self) -> None:
        while not self.stop.is_set():
            calls = [self.handle.check.remote(self.key) for _ in range(4)]
            for call in calls:
                self.answers.append(call.result(timeout_s=30))
            self.stop.wait(0.05)


@pytest.mark.timeout(1200)
def test_a_revoked_key_is_refused_by_replicas_on_both_nodes_within_10s(cluster, tmp_path):
    keys_file = tmp_path / "keys.json"
    store = KeyStore(keys_file)
    _, leaver = store.create(["predict"], name="leaver")
    _, keeper = store.create(["predict"], name="keeper")
    section = AuthSection(keys_file=keys_file, keys_env=UNSET_ENV, rate_per_s=1e6, burst=10**6)
    settings, book = start_key_service(guard_settings(section, "127.0.0.1", grpc=True), section, "cluster-keys")
    serve.start(proxy_location="Disabled", logging_config={"log_level": "WARNING"})
    handle = serve.run(GuardProbe.bind(settings), name="guard-probe", route_prefix=None,
                       logging_config={"log_level": "WARNING"})
    nodes = {n.name: n.node_id for n in cluster.nodes}
    replica_nodes = {nodes["node-a"], nodes["node-b"]}

    asker, control = Asker(handle, leaver), Asker(handle, keeper)
    asker.start()
    control.start()
    wait_until(lambda: {n for _, n, s in asker.answers if s == 200} == replica_nodes, 120,
               "both replicas (node-a, node-b) taking the key")

    revoked_at = time.monotonic()  # counted from before the file changes: the bound is not flattered
    assert evolve(["keys", "revoke", key_id(leaver), "--file", str(keys_file), "--env", UNSET_ENV]) == 0

    def refused_on_both() -> bool:
        return {n for t, n, s in asker.answers if t > revoked_at and s == 401} == replica_nodes

    wait_until(refused_on_both, 60, "both replicas refusing the revoked key", every_s=0.1)
    settle = time.monotonic()
    wait_until(lambda: len([a for a in asker.answers if a[0] > settle]) >= 40, 60, "answers after both refused")
    asker.stop.set()
    control.stop.set()
    asker.join(timeout=60)
    control.join(timeout=60)

    first_refusal, last_taken = {}, {}
    for t, node, status in asker.answers:
        if t <= revoked_at:
            continue
        if status == 401:
            first_refusal.setdefault(node, t - revoked_at)
        elif status == 200:
            last_taken[node] = t - revoked_at
    names = {v: k for k, v in nodes.items()}
    book_node = _node_of(cluster, settings["book"]["name"])
    print(f"\n[keys] revoked key first refused, seconds after `evolve keys revoke`: "
          + ", ".join(f"{names[n]} {s:.2f}" for n, s in sorted(first_refusal.items(), key=lambda x: names[x[0]]))
          + "; last taken: " + (", ".join(f"{names[n]} {s:.2f}" for n, s in last_taken.items()) or "never")
          + f"; key book on {names.get(book_node, book_node)}, answers {len(asker.answers)}")
    assert set(first_refusal) == replica_nodes
    assert max(first_refusal.values()) <= BOUND_S, first_refusal
    for node, taken in last_taken.items():  # once a replica refuses it, it never takes it again
        assert taken < first_refusal[node], (names[node], taken, first_refusal[node])
    after = [s for t, _, s in control.answers if t > revoked_at]
    assert after and set(after) == {200}  # the other key goes on working everywhere
    assert {n for t, n, s in control.answers if t > revoked_at} == replica_nodes


def _node_of(c: LocalCluster, name: str) -> str:
    from ray.util.state import list_actors

    found = list_actors(address=c.address, filters=[("name", "=", name), ("state", "=", "ALIVE")],
                        raise_on_missing_output=False)
    return found[0].node_id if found else "?"
