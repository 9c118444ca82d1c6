"""Shared storage on a real S3-compatible server (SeaweedFS on loopback, tests/s3_server.py):
the registry's publish/load round trip, and a replay shard whose writer is SIGKILLed
recovering every acknowledged row from the segment objects alone."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
import uuid

import pytest
import s3fs
import torch

from core.registry import PolicyRegistry
from core.replay.config import ReplayConfig, TableConfig
from core.replay.store import ShardStore
from tests.s3_server import apply_env, restore_env, seaweedfs

pytestmark = pytest.mark.integration
REPO = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))


@pytest.fixture(scope="module")
def s3(tmp_path_factory):
    with seaweedfs(tmp_path_factory.mktemp("s3")) as server:
        before = apply_env(server)
        try:
            yield server
        finally:
            restore_env(before)


def _objects(server, prefix: str) -> list[str]:
    fs = s3fs.S3FileSystem(client_kwargs={"endpoint_url": server.endpoint}, skip_instance_cache=True)
    return fs.find(prefix.removeprefix("s3://"))


def test_registry_publish_load_round_trip(s3):
    url = s3.make_bucket(f"reg-{uuid.uuid4().hex[:8]}") + "/evolve/registry"
    g = torch.Generator().manual_seed(0)
    weights = {"fc.weight": torch.randn(4, 3, generator=g), "fc.bias": torch.randn(4, generator=g)}
    v1 = PolicyRegistry(url).publish("cartpole", weights, {"metrics": {"eval_return": 20.0}})
    v2 = PolicyRegistry(url).publish("cartpole", {k: w + 1 for k, w in weights.items()},
                                     {"parent_version": v1}, files={"notes.txt": b"hi"})
    PolicyRegistry(url).promote("cartpole", v2)

    reader = PolicyRegistry(url, create=False)  # a fresh client: everything comes back from the server
    loaded = reader.load("cartpole", v2)
    assert (v1, v2) == (1, 2)
    assert torch.equal(loaded.weights["fc.weight"], weights["fc.weight"] + 1)
    assert loaded.files == {"notes.txt": b"hi"}
    assert reader.latest("cartpole", "live").version == v2
    assert [m.version for m in reader.lineage("cartpole", v2)] == [2, 1]
    keys = _objects(s3, url)
    assert any(k.endswith("cartpole/v000002/weights.safetensors") for k in keys), keys


WRITER = r"""
import json, sys
sys.path.insert(0, sys.argv[2] + "/benchmarks")
from _transitions import cartpole_batch
from core.replay.config import ReplayConfig
from core.replay.store import ShardStore
cfg = ReplayConfig.model_validate(json.loads(sys.argv[3]))
store = ShardStore(cfg, sys.argv[1], shard=0)
i = 0
while True:  # until SIGKILLed: each line names rows the store has acknowledged
    ack = store.add("transitions", cartpole_batch(32, i * 32, actor="w"))
    print(json.dumps({"upto": (i + 1) * 32, "ack": ack}), flush=True)
    i += 1
"""


def test_replay_shard_recovers_acknowledged_rows_from_s3_after_sigkill(s3, tmp_path):
    url = s3.make_bucket(f"replay-{uuid.uuid4().hex[:8]}") + "/run/replay"
    cfg = ReplayConfig(num_shards=1, tables={"transitions": TableConfig(kind="transitions", obs_dim=4, capacity=4096)})
    writer = subprocess.Popen([sys.executable, "-c", WRITER, url, REPO, cfg.model_dump_json()], cwd=REPO,
                              env={**os.environ, "PYTHONPATH": REPO}, stdout=subprocess.PIPE, text=True)
    acked, deadline = 0, time.monotonic() + 60
    try:
        for line in writer.stdout:  # kill it mid-stream once it has acknowledged a few batches
            acked = json.loads(line)["upto"]
            if acked >= 320 or time.monotonic() > deadline:
                break
    finally:
        writer.send_signal(signal.SIGKILL)
        writer.wait(timeout=30)
    assert acked >= 320, f"writer acknowledged only {acked} rows before the deadline"

    store = ShardStore(cfg, url, shard=0)  # a restarted shard, anywhere: only the objects are shared
    rows = store.export("transitions")
    ids = set(rows.column("id").to_pylist())
    missing = [f"w-{i}" for i in range(acked) if f"w-{i}" not in ids]
    assert not missing, f"{len(missing)} of {acked} acknowledged rows lost, e.g. {missing[:5]}"
    assert store.info()["transitions"]["size"] == len(ids) >= acked
    segments = [k for k in _objects(s3, url) if k.rsplit("/", 1)[-1].startswith("seg-")]
    assert len(segments) >= acked // 32
    # the recovered shard writes on after the last recovered row, into the same store
    store.add("transitions", _batch_after(len(ids)))
    again = ShardStore(cfg, url, shard=0)
    assert again.info()["transitions"]["size"] == len(ids) + 32
    store.close()
    again.close()


def _batch_after(n: int):
    sys.path.insert(0, os.path.join(REPO, "benchmarks"))
    from _transitions import cartpole_batch

    return cartpole_batch(32, 10**6 + n, actor="after")
