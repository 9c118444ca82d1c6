"""The replay store on a real Ray cluster: shard actors, the routing client, crash recovery."""

import os
import signal
import sys
import time
from pathlib import Path

import numpy as np
import pyarrow.parquet as pq
import pytest
import ray

from actors.replay_client import ReplayClient
from actors.replay_shard import launch_shards
from cluster.rundir import RunDir
from core.config.loader import load_config
from core.config.replay import ReplaySection, TableSection
from core.replay.contract import ReplayStore
from core.replay.table import ReplayError, ReplayTimeout
from core.data.schemas import SchemaError
from tests.integration.helpers import run_cli, wait_until

sys.path.insert(0, str(Path(__file__).resolve().parents[2] / "benchmarks"))
from _transitions import cartpole_batch  # noqa: E402

pytestmark = pytest.mark.integration


@pytest.fixture(scope="module", autouse=True)
def cluster():
    ray.init(num_cpus=2, include_dashboard=False, namespace="replay-test", log_to_driver=False)
    yield
    ray.shutdown()


def _client(tmp_path, name, **table):
    cfg = ReplaySection(num_shards=2, tables={name: TableSection(obs_dim=4, **table)})
    # a fresh actor name per test: shards are named per run
    shards = [
        s for s in launch_shards(cfg.model_copy(), str(tmp_path / "replay"), seed=0)
    ]
    client = ReplayClient(shards, cfg, seed=0)
    client.info()  # every shard up
    return client, shards, cfg


def _kill_actors(shards):
    for s in shards:
        ray.kill(s, no_restart=True)
    wait_until(lambda: all(_dead(s) for s in shards), 30, "shards to stop")


def _dead(handle):
    try:
        ray.get(handle.pid.remote(), timeout=1)
        return False
    except Exception:
        return True


def test_acknowledged_rows_survive_a_sigkilled_shard(tmp_path):
    client, shards, _ = _client(tmp_path, "transitions", capacity=200_000)
    victim_pid = ray.get(shards[0].pid.remote())
    tickets, killed_at = [], None
    for i in range(100):
        tickets.append(client.add("transitions", cartpole_batch(1000, i * 1000)))
        if i == 40:
            killed_at = i
            os.kill(victim_pid, signal.SIGKILL)  # mid-stream: adds are in flight to this shard
    acked = 0
    for t in tickets:
        ack = t.result(timeout_s=120)
        # a retried add whose rows were already durable comes back as duplicates: still acknowledged
        acked += ack["accepted"] + ack["duplicates"]
    assert killed_at == 40
    new_pid = ray.get(shards[0].pid.remote(), timeout=60)
    assert new_pid != victim_pid  # the shard really died and was restarted
    rows = client.export("transitions")
    ids = rows.column("id").to_pylist()
    assert acked == len(ids) == 100_000
    assert len(set(ids)) == len(ids)  # exactly once: retried adds did not duplicate
    expected = {f"bench-{i}" for i in range(100_000)}
    assert set(ids) == expected
    _kill_actors(shards)


def test_sample_priorities_info_and_exports(tmp_path):
    client, shards, cfg = _client(tmp_path, "per", sampler="prioritized", capacity=50_000)
    for i in range(10):
        client.add("per", cartpole_batch(1000, i * 1000, table="per", version=i))
    assert client.flush() == {"accepted": 10_000, "duplicates": 0}
    rows = client.sample("per", 256, timeout_s=30)
    assert rows.num_rows == 256
    for col in ("_key", "_probability", "_times_sampled", "_weight", "policy_version"):
        assert col in rows.schema.names
    probs = rows.column("_probability").to_numpy()
    assert np.allclose(probs, 1 / 10_000, rtol=0.05)  # equal priorities: about uniform
    keys = rows.column("_key").to_numpy()
    assert client.update_priorities("per", keys, np.full(len(keys), 50.0)) == len(np.unique(keys))
    boosted = set(keys.tolist())
    again = client.sample("per", 1024, timeout_s=30)
    share = np.isin(again.column("_key").to_numpy(), list(boosted)).mean()
    mass = len(boosted) * 50.0**0.6  # alpha 0.6; every other row keeps priority 1
    assert share == pytest.approx(mass / (mass + 10_000 - len(boosted)), abs=0.06)
    weights = again.column("_weight").to_numpy()
    assert weights.max() == pytest.approx(1.0) and weights.min() < 0.5
    info = client.info()["per"]
    assert info["size"] == 10_000 and info["samples"] >= 768
    assert (info["oldest_policy_version"], info["newest_policy_version"]) == (0, 9)
    assert info["disk_bytes"] > 0 and len(info["shards"]) == 2
    table = client.export("per")
    assert table.num_rows == 10_000
    assert client.to_ray_dataset("per").count() == 10_000
    assert len(client.to_hf_dataset("per")) == 10_000
    assert isinstance(client, ReplayStore)
    _kill_actors(shards)


def test_bad_input_is_refused_and_nothing_is_written(tmp_path):
    client, shards, _ = _client(tmp_path, "transitions", capacity=5_000, max_batch_rows=2_000)
    client.add_and_wait("transitions", cartpole_batch(100, 0))
    bad = cartpole_batch(10, 1000).to_pydict()
    bad["reward"][3] = float("nan")
    with pytest.raises(SchemaError, match="column 'reward'"):
        client.add("transitions", bad)
    with pytest.raises(SchemaError, match="column 'obs'"):
        client.add("transitions", cartpole_batch(10, 2000).drop_columns(["obs"]))
    with pytest.raises(ReplayError, match="over the limit"):
        client.add_and_wait("transitions", cartpole_batch(4_500, 3000))
    with pytest.raises(ReplayError, match="unknown table"):
        client.sample("nope", 10)
    # a raw shard call with another table's rows: the shard validates too
    with pytest.raises(SchemaError, match="column 'table'"):
        ray.get(shards[0].add.remote("transitions", cartpole_batch(5, 9000, table="other")))
    assert client.info()["transitions"]["size"] == 100
    _kill_actors(shards)


def test_rate_limited_sample_times_out_across_ray(tmp_path):
    client, shards, _ = _client(tmp_path, "paced", samples_per_insert=1.0, min_size=100, error_buffer=200)
    client.add_and_wait("paced", cartpole_batch(200, 0, table="paced"))
    taken = 0
    with pytest.raises(ReplayTimeout):
        deadline = time.monotonic() + 60
        while time.monotonic() < deadline:
            taken += client.sample("paced", 50, timeout_s=0.5).num_rows
    assert 0 < taken <= 200 + 2 * 200  # the limiter let the sampler run ahead only by its window
    _kill_actors(shards)


def test_replay_cli_inspects_and_exports_a_run(tmp_path):
    run_dir = tmp_path / "run"
    cfg = load_config(None, [f"replay.dir={tmp_path / 'replay'}", "replay.tables={transitions: {obs_dim: 4}}"])
    RunDir(run_dir).write_config(cfg)
    client = ReplayClient(launch_shards(cfg.replay, str(tmp_path / "replay")), cfg.replay)
    for i in range(3):
        client.add("transitions", cartpole_batch(500, i * 500, version=i + 1))
    client.flush()
    res = run_cli("replay", "inspect", str(run_dir))
    assert res.returncode == 0, res.stderr
    line = next(line for line in res.stdout.splitlines() if line.startswith("transitions"))
    assert "1500" in line and "1..3" in line and "rollout=1500" in line
    res = run_cli("replay", "export", str(run_dir), "transitions", str(tmp_path / "t.parquet"))
    assert res.returncode == 0, res.stderr
    assert pq.read_table(tmp_path / "t.parquet").num_rows == 1500
    _kill_actors(client.shards)
