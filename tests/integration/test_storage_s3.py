"""Shared storage on a real S3-compatible server (SeaweedFS on loopback, tests/s3_server.py):
the registry's publish/load round trip, a replay shard whose writer is SIGKILLed recovering
every acknowledged row from the segment objects alone, and the conditional writes that keep
writers apart: version claims and stage changes raced by two processes, a run's lease on its
storage, a segment object never written over."""

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

from core.storage.registry import PolicyRegistry
from core.config.replay import ReplaySection, TableSection
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


@pytest.fixture(scope="module")
def bucket(s3) -> str:
    """The module's one bucket, each test under a prefix of its own: SeaweedFS gives every bucket
    volumes of its own, and the test server has room for only a couple."""
    return s3.make_bucket(f"evolve-{uuid.uuid4().hex[:8]}")


def _prefix(bucket: str, what: str) -> str:
    return f"{bucket}/{what}-{uuid.uuid4().hex[:8]}"


def _objects(server, prefix: str) -> list[str]:
    fs = s3fs.S3FileSystem(client_kwargs={"endpoint_url": server.endpoint}, skip_instance_cache=True)
    return fs.find(prefix.removeprefix("s3://"))


def test_registry_publish_load_round_trip(s3, bucket):
    url = _prefix(bucket, "reg") + "/evolve/registry"
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
from core.config.replay import ReplaySection
from core.replay.store import ShardStore
cfg = ReplaySection.model_validate(json.loads(sys.argv[3]))
store = ShardStore(cfg, sys.argv[1], shard=0)
i = 0
while True:  # until SIGKILLed: each line names rows the store has acknowledged
    ack = store.add("transitions", cartpole_batch(32, i * 32, actor="w"))
    print(json.dumps({"upto": (i + 1) * 32, "ack": ack}), flush=True)
    i += 1
"""


def test_replay_shard_recovers_acknowledged_rows_from_s3_after_sigkill(s3, bucket, tmp_path):
    url = _prefix(bucket, "replay") + "/run/replay"
    cfg = ReplaySection(num_shards=1, tables={"transitions": TableSection(kind="transitions", obs_dim=4, capacity=4096)})
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


# ---- one writer per number, per stage change, per storage: conditional writes on the gateway ----

CLAIMER = r"""
import json, sys
from core.storage.registry import PolicyRegistry
from core.storage.registry_locks import claim_version
reg = PolicyRegistry(sys.argv[1])
pdir = f"{reg.root}/p"
sys.stdin.readline()  # both processes start on the test's word
got = [claim_version(reg.fs, pdir, lambda v: f"{pdir}/v{v:06d}")[0] for _ in range(int(sys.argv[2]))]
print(json.dumps(got), flush=True)
"""

PROMOTER = r"""
import sys
from core.storage.registry import PolicyRegistry
reg = PolicyRegistry(sys.argv[1])
versions = [int(v) for v in sys.argv[2].split(",")]
sys.stdin.readline()
for v in versions:
    reg.promote("p", v)
print("done", flush=True)
"""


def _race(script: str, *args_per_process: list[str], timeout_s: float = 240) -> list[str]:
    """Start one process per argument list, release them together, return each one's last line."""
    procs = [subprocess.Popen([sys.executable, "-c", script, *args], cwd=REPO, env={**os.environ, "PYTHONPATH": REPO},
                              stdin=subprocess.PIPE, stdout=subprocess.PIPE, text=True) for args in args_per_process]
    try:
        for p in procs:
            p.stdin.write("go\n")
            p.stdin.flush()
        outs = [p.communicate(timeout=timeout_s)[0] for p in procs]
    finally:
        for p in procs:
            if p.poll() is None:
                p.kill()
    assert all(p.returncode == 0 for p in procs), [p.returncode for p in procs]
    return [out.strip().splitlines()[-1] for out in outs]


def test_two_processes_claiming_versions_on_the_gateway_get_different_numbers(s3, bucket):
    url = _prefix(bucket, "claim") + "/registry"
    per_process = 60
    a, b = (json.loads(line) for line in _race(CLAIMER, [url, str(per_process)], [url, str(per_process)]))
    assert len(a) == len(b) == per_process
    shared = sorted(set(a) & set(b))
    assert not shared, f"both processes claimed {len(shared)} of the same numbers, e.g. {shared[:5]}"
    assert sorted(a + b) == list(range(1, 2 * per_process + 1))  # and no number skipped
    assert a == sorted(a) and b == sorted(b)


def test_two_processes_changing_stages_on_the_gateway_never_lose_an_update(s3, bucket):
    url = _prefix(bucket, "stages") + "/registry"
    reg = PolicyRegistry(url)
    versions = [reg.publish("p", {"w": torch.full((2,), float(i))}) for i in range(4)]
    per_process = 20
    mine = [",".join(str(v) for v in versions[k::2] * (per_process // 2)) for k in range(2)]
    assert _race(PROMOTER, [url, mine[0]], [url, mine[1]]) == ["done", "done"]
    history = PolicyRegistry(url, create=False).stages("p")["live"]["history"]
    assert len(history) == 2 * per_process, f"{2 * per_process - len(history)} promotions lost"
    assert not _objects(s3, url + "/p/stages.lease")  # every lock released


HOLDER = r"""
import sys
from core.storage.run_hold import RunHold
hold = RunHold([sys.argv[1]], "first")
hold.acquire()
print("held", hold.holder["run_id"], flush=True)
sys.stdin.readline()
"""


def test_a_second_run_on_held_s3_storage_is_refused_and_a_dead_holders_lease_taken_over(s3, bucket):
    from core.storage.run_hold import RunHold, StorageHeld

    url = _prefix(bucket, "hold") + "/evolve"
    holder = subprocess.Popen([sys.executable, "-c", HOLDER, url], cwd=REPO, env={**os.environ, "PYTHONPATH": REPO},
                              stdin=subprocess.PIPE, stdout=subprocess.PIPE, text=True)
    try:
        held, run_id = holder.stdout.readline().split()
        assert held == "held"
        with pytest.raises(StorageHeld) as refused:
            RunHold([url], "second").acquire()
        said = str(refused.value)
        assert f"storage {url} is held by run 'first' (id {run_id}, pid {holder.pid}" in said, said
    finally:
        holder.kill()  # no release: the lease object stays behind
        holder.wait(timeout=30)
    assert _objects(s3, url + "/run.lease")
    hold = RunHold([url], "next")
    lines = hold.acquire()
    assert len(lines) == 1 and run_id in lines[0] and "its process is no longer running: taken over" in lines[0]
    hold.release()
    assert not _objects(s3, url + "/run.lease")


def test_an_expired_lease_on_the_gateway_is_taken_over_and_its_holder_loses_it(s3, bucket):
    from core.storage.object_lease import LeaseHeld, LeaseLost, ObjectLease

    url = _prefix(bucket, "lease") + "/evolve"
    fs = s3fs.S3FileSystem(skip_instance_cache=True)
    path = url.removeprefix("s3://") + "/run.lease"
    first = ObjectLease(fs, path, {"run": "first"}, ttl_s=1.0)
    assert first.acquire() is None  # and never renewed: it expires
    second = ObjectLease(fs, path, {"run": "second"}, ttl_s=30.0)
    deadline = time.monotonic() + 30
    while True:
        try:
            taken = second.acquire()
            break
        except LeaseHeld:
            assert time.monotonic() < deadline, "the first lease never expired"
            time.sleep(0.1)  # polling its expiry, on a deadline
    assert taken["run"] == "first" and "expired" in taken["stale_because"]
    with pytest.raises(LeaseLost):
        first.renew()
    first.release()  # its conditional delete finds another holder's object and leaves it
    assert json.loads(fs.cat_file(path))["run"] == "second"
    second.release()


def test_a_segment_object_already_on_the_gateway_is_not_written_over(s3, bucket):
    from core.replay.object_log import ObjectSegmentLog

    url = _prefix(bucket, "seg") + "/t"
    schema = _batch_after(0).schema
    first, second = ObjectSegmentLog(url, schema), ObjectSegmentLog(url, schema)
    first.append(0, _batch_after(0))
    with pytest.raises(FileExistsError, match="already exists: another process"):
        second.append(0, _batch_after(100))
    rows = [r for _, b in ObjectSegmentLog(url, schema).recover() for r in b.column("id").to_pylist()]
    assert rows == _batch_after(0).column("id").to_pylist()
