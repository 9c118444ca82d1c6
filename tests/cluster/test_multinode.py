"""configs/cluster.yaml on a real multi-node Ray cluster, submitted the way docs/cluster.md says.

    head      1 CPU      GCS, dashboard (job server), the run's driver, Serve's controller/proxy
    learner   4 CPU      learner: 2          both loops' Ray Train learners (and whatever else fits)
    actors-a  2 CPU      actors: 100         rollout, evaluator, traffic actors; shards, replicas
    actors-b  2 CPU      actors: 100         the same; its raylet is SIGKILLed mid-run

Two actor nodes, so that what the lost one ran has somewhere to come back to. The shared
storage is an absolute directory every raylet of this machine sees (run.storage), as a
shared filesystem mount is on a real cluster; the s3:// path has its own test
(tests/integration/test_storage_s3.py).

Placement is read from Ray's state API. During the node loss a probe writes rows into the
run's replay store and counts what the shards acknowledged; after it, every acknowledged
row must be there. A client asks the feedback app for predictions throughout.
"""

from __future__ import annotations

import datetime as dt
import json
import re
import os
import shutil
import subprocess
import tempfile
import threading
import time
from pathlib import Path

import httpx
import pyarrow as pa
import pytest
import ray
from ray.util.state import list_actors

from tests.cluster.harness import AUTH_TOKEN, BIN, LocalCluster, cluster_env, free_ports, wait_until

pytestmark = pytest.mark.cluster
REPO = Path(__file__).resolve().parents[2]
NUM_SHARDS = 3
PROBE_BATCH = 16


@pytest.fixture(scope="module")
def cluster():
    temp = Path(tempfile.mkdtemp(prefix="evc", dir="/tmp"))  # short: Ray's socket paths have a length limit
    c = LocalCluster(temp, cluster_env(), REPO)
    token = os.environ.get("RAY_AUTH_TOKEN")
    os.environ["RAY_AUTH_TOKEN"] = AUTH_TOKEN  # this process joins the cluster too (tests/conftest.py: token auth)
    try:
        c.start_head(num_cpus=1)
        c.add_worker("learner", 4, {"learner": 2})  # 2 CPUs for learners, 2 for what else lands there
        c.add_worker("actors-a", 2, {"actors": 100})
        c.add_worker("actors-b", 2, {"actors": 100})
        ray.init(address=c.address, namespace="evolve", logging_level="WARNING", log_to_driver=False)
        by_port = {n["NodeManagerPort"]: n["NodeID"] for n in ray.nodes() if n["Alive"]}
        for node in c.nodes:
            node.node_id = by_port[node.node_manager_port]
        yield c
    finally:
        ray.shutdown()
        c.stop()
        shutil.rmtree(temp, ignore_errors=True)
        if token is None:
            os.environ.pop("RAY_AUTH_TOKEN", None)
        else:
            os.environ["RAY_AUTH_TOKEN"] = token


def _job(c: LocalCluster, *args: str, timeout_s: float = 120) -> subprocess.CompletedProcess:
    return subprocess.run([str(BIN / "ray"), "job", *args], cwd=REPO, env=cluster_env({"RAY_ADDRESS": c.dashboard}),
                          capture_output=True, text=True, timeout=timeout_s)


def _submit(c: LocalCluster, evolve_args: list[str]) -> str:
    out = _job(c, "submit", "--no-wait", "--", "evolve", "run", *evolve_args)
    assert out.returncode == 0, out.stdout + out.stderr
    return re.search(r"raysubmit_[A-Za-z0-9]+", out.stdout + out.stderr).group(0)


def _jobs(c: LocalCluster):
    from ray.job_submission import JobSubmissionClient

    return JobSubmissionClient(c.dashboard)


def _job_status(c: LocalCluster, job_id: str) -> str:
    """PENDING, RUNNING, STOPPED, SUCCEEDED or FAILED."""
    return str(_jobs(c).get_job_status(job_id)).rsplit(".", 1)[-1]


def _logs(c: LocalCluster, job_id: str) -> str:
    return _jobs(c).get_job_logs(job_id)


def test_node_local_storage_is_refused_in_one_line_naming_the_key(cluster, tmp_path):
    job = _submit(cluster, [str(REPO / "configs/cluster.yaml"), "--set", "loops.sentiment=null", "--set", "run.storage=null",
                            "--set", "run.run_dir=runs/cluster-refused", "--set", "serving.enabled=false",
                            "--set", "loops.cartpole.experience=rollouts"])  # no clients without Serve
    wait_until(lambda: _job_status(cluster, job) in ("FAILED", "SUCCEEDED"), 300, "the refusal")
    assert _job_status(cluster, job) == "FAILED"
    logs = _logs(cluster, job)
    refusal = [line for line in logs.splitlines() if "refusing to run on a 4-node cluster" in line]
    assert len(refusal) == 1 and "run.storage" in refusal[0] and "relative path" in refusal[0], logs[-3000:]


class Probe(threading.Thread):
    """Writes text rows into the run's replay store and keeps the ids each acknowledged add carried."""

    def __init__(self, client):
        super().__init__(daemon=True)
        self.client, self.acked, self.errors, self.stop = client, [], [], threading.Event()

    def run(self) -> None:
        from core.data.schemas import text_schema

        i = 0
        while not self.stop.is_set():
            ids = [f"probe-{i + k}" for k in range(PROBE_BATCH)]
            now = dt.datetime.now(dt.timezone.utc)
            batch = pa.RecordBatch.from_pydict({
                "id": ids, "table": ["sentiment-text"] * PROBE_BATCH, "source": ["corpus"] * PROBE_BATCH,
                "actor_id": ["probe"] * PROBE_BATCH, "policy_id": ["probe"] * PROBE_BATCH,
                "policy_version": [0] * PROBE_BATCH, "created_at": [now] * PROBE_BATCH,
                "text": [f"row {i + k}" for k in range(PROBE_BATCH)]}, schema=text_schema())
            try:
                self.client.add_and_wait("sentiment-text", batch, timeout_s=60)
                self.acked += ids
            except Exception as exc:  # an add that was never acknowledged: its rows are not counted
                self.errors.append(f"{type(exc).__name__}: {exc}")
            i += PROBE_BATCH


class Asker(threading.Thread):
    """Asks the feedback app for a prediction over and over; keeps (time, ok) per answer."""

    def __init__(self, url: str):
        super().__init__(daemon=True)
        self.url, self.answers, self.stop = url, [], threading.Event()

    def run(self) -> None:
        with httpx.Client(timeout=10) as http:
            while not self.stop.is_set():
                try:
                    ok = http.post(self.url, json={"text": "这家酒店很好"}).status_code == 200
                except httpx.HTTPError:
                    ok = False
                self.answers.append((time.time(), ok))
                self.stop.wait(0.2)


def _actors(address: str, state: str = "ALIVE") -> list[dict]:
    return [{"class_name": a.class_name, "node_id": a.node_id, "name": a.name}
            for a in list_actors(address=address, filters=[("state", "=", state)], limit=2000,
                                 raise_on_missing_output=False)]


def _placement(c: LocalCluster) -> dict[str, list[str]]:
    """class name -> node ids of its live actors."""
    out: dict[str, list[str]] = {}
    for a in _actors(c.address):
        out.setdefault(a["class_name"], []).append(a["node_id"])
    return out


def _replicas(where: dict[str, list[str]], app: str) -> list[str]:
    return [n for cls, nodes in where.items() if cls.startswith(f"ServeReplica:{app}:") for n in nodes]


@pytest.mark.timeout(1800)  # a run of two loops on four raylets, a node lost and replaced
def test_the_cluster_config_runs_placed_by_resource_and_survives_a_lost_node(cluster, tmp_path):
    from actors.replay_client import ReplayClient
    from actors.replay_shard import ACTOR_PREFIX
    from core.config.loader import load_config

    storage, run_dir = tmp_path / "shared", tmp_path / "run"
    (port,) = free_ports(1)
    job = _submit(cluster, [
        str(REPO / "configs/cluster.yaml"), "--run-dir", str(run_dir), "--budget-s", "900",
        "--set", f"run.storage={storage}", "--set", "run.progress_interval_s=2",
        "--set", "serving.host=127.0.0.1", "--set", f"serving.http_port={port}",
        "--set", "learner.use_gpu=false", "--set", "learner.num_workers=1",
        "--set", f"replay.num_shards={NUM_SHARDS}", "--set", "replay.shard_num_cpus=0.1",
        "--set", "replay.tables.cartpole.min_size=256",
        "--set", "loops.cartpole.acting={num_actors: 2, num_envs: 4, actor_num_cpus: 0.25, steps_per_write: 64, "
                 "min_steps_per_write: 16}",
        "--set", "loops.sentiment.model.encoder_registry=null", "--set", "loops.sentiment.traffic.actor_num_cpus=0.1",
    ])
    nodes = {n.name: n.node_id for n in cluster.nodes}
    actor_nodes = {nodes["actors-a"], nodes["actors-b"]}

    def up() -> dict | None:
        assert _job_status(cluster, job) in ("PENDING", "RUNNING"), _logs(cluster, job)[-4000:]
        where = _placement(cluster)
        ready = (len(where.get("RolloutActor", [])) == 2 and where.get("TrafficActor")
                 and len(where.get("ReplayShard", [])) == NUM_SHARDS and len(_replicas(where, "sentiment")) >= 2
                 and len([n for cls, ns in where.items() if "TrainWorker" in cls for n in ns]) >= 2)
        return where if ready else None

    t0 = time.monotonic()
    where = wait_until(up, 600, "every loop's actors, shards, replicas and learners alive", every_s=3)
    print(f"\n[cluster] run up in {time.monotonic() - t0:.0f}s")

    # ---- placement, from Ray's state API --------------------------------------------------
    learners = [n for cls, ns in where.items() if "TrainWorker" in cls for n in ns]
    assert set(learners) == {nodes["learner"]}, where
    for cls in ("RolloutActor", "TrafficActor", "EvaluatorActor"):
        assert set(where.get(cls, [])) <= actor_nodes and where.get(cls), (cls, where)
    assert len(set(where["ReplayShard"])) >= 2, where["ReplayShard"]
    assert len(set(_replicas(where, "sentiment"))) >= 2, _replicas(where, "sentiment")
    print(f"[cluster] placement: learners on learner; rollout/traffic on actors-a/b; "
          f"shards on {sorted(_name(nodes, n) for n in where['ReplayShard'])}; "
          f"feedback replicas on {sorted(_name(nodes, n) for n in _replicas(where, 'sentiment'))}")

    # ---- the run outlives its client: `ray job submit --no-wait` has exited; status re-attaches --
    cfg = load_config(run_dir / "config.yaml")

    def loops_shown() -> str | None:
        out = subprocess.run([str(BIN / "evolve"), "status", "--address", cluster.address], cwd=REPO,
                             env=cluster_env(), capture_output=True, text=True, timeout=120)
        return out.stdout if all(name in out.stdout for name in (tuple(cfg.loops))) else None

    status = wait_until(loops_shown, 120, "`evolve status` showing both loops", every_s=5)
    print(f"[cluster] evolve status --address {cluster.address}:\n{status}")

    # ---- the lost node ----------------------------------------------------------------------
    shards = [ray.get_actor(f"{ACTOR_PREFIX}{i}") for i in range(NUM_SHARDS)]
    probe = Probe(ReplayClient(shards, cfg.replay))
    asker = Asker(f"http://127.0.0.1:{port}/v1/predict")
    probe.start()
    asker.start()
    wait_until(lambda: len(probe.acked) >= 10 * PROBE_BATCH, 120, "the probe's first acknowledged rows")
    wait_until(lambda: any(ok for _, ok in asker.answers), 120, "a first prediction")
    # lose the actor node that holds the most shards and replicas
    victim_name = max(("actors-a", "actors-b"), key=lambda k: where["ReplayShard"].count(nodes[k])
                      + _replicas(where, "sentiment").count(nodes[k]))
    victim = next(n for n in cluster.nodes if n.name == victim_name)
    lost = {cls: ns.count(victim.node_id) for cls, ns in where.items() if victim.node_id in ns}
    killed_at = cluster.kill_node(victim)
    print(f"[cluster] SIGKILLed {victim_name}'s raylet; it ran {lost}")

    def recovered() -> dict | None:
        alive = {n["NodeID"] for n in ray.nodes() if n["Alive"]}
        if victim.node_id in alive:
            return None  # not yet declared dead
        now = _placement(cluster)
        if any(victim.node_id in ns for ns in now.values()):
            return None
        ok = (len(now.get("ReplayShard", [])) == NUM_SHARDS and len(now.get("RolloutActor", [])) == 2
              and now.get("TrafficActor") and len(_replicas(now, "sentiment")) >= 2)
        if not ok:
            return None
        ray.get([s.info.remote() for s in shards], timeout=30)  # every shard answers (recovered its rows)
        return now

    after = wait_until(recovered, 300, "shards, actors and replicas back on surviving nodes", every_s=1)
    recovery_s = time.time() - killed_at
    acked_at_recovery = len(probe.acked)
    wait_until(lambda: len(probe.acked) >= acked_at_recovery + 5 * PROBE_BATCH, 120, "acknowledged adds after recovery")
    probe.stop.set()
    asker.stop.set()
    probe.join(timeout=90)
    asker.join(timeout=30)

    stored = set(ReplayClient(shards, cfg.replay).export("sentiment-text").column("id").to_pylist())
    lost_rows = [i for i in probe.acked if i not in stored]
    during = [ok for t, ok in asker.answers if t >= killed_at and t <= killed_at + recovery_s]
    gaps = _longest_gap([t for t, ok in asker.answers if ok])
    print(f"[cluster] recovery {recovery_s:.1f}s (kill -> every shard, actor and replica alive elsewhere); "
          f"acknowledged rows {len(probe.acked)}, lost {len(lost_rows)}; unacknowledged adds {len(probe.errors)}; "
          f"predictions during recovery {sum(during)}/{len(during)} ok, longest gap between answers {gaps:.1f}s")
    print(f"[cluster] after: shards on {sorted(_name(nodes, n) for n in after['ReplayShard'])}, "
          f"replicas on {sorted(_name(nodes, n) for n in _replicas(after, 'sentiment'))}")
    assert not lost_rows, f"{len(lost_rows)} acknowledged rows lost, e.g. {lost_rows[:5]}"
    assert set(after["RolloutActor"]) | set(after["TrafficActor"]) <= actor_nodes - {victim.node_id}
    assert any(during), "no prediction answered while the node was being replaced"

    # ---- `evolve stop` ends it cleanly: summary written -------------------------------------
    out = subprocess.run([str(BIN / "evolve"), "stop", "--address", cluster.dashboard, "--job", job], cwd=REPO,
                         env=cluster_env(), capture_output=True, text=True, timeout=300)
    assert out.returncode == 0, out.stdout + out.stderr
    summary = wait_until(lambda: (run_dir / "summary.json").is_file() and json.loads((run_dir / "summary.json").read_text()),
                         180, "summary.json")
    assert set(summary["loops"]) == set(cfg.loops), summary["loops"]
    assert summary["run"]["stopped_by"] == "terminated", summary["run"]


def _name(nodes: dict[str, str], node_id: str) -> str:
    return next((k for k, v in nodes.items() if v == node_id), node_id[:8])


def _longest_gap(times: list[float]) -> float:
    return max((b - a for a, b in zip(times, times[1:])), default=0.0)
