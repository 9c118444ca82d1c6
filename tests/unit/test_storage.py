"""Shared storage: where a run's registry, replay and Train storage resolve to, which of
them a multi-node cluster refuses, and replay segments as objects (fsspec's memory://)."""

from __future__ import annotations

import sys
import uuid
from pathlib import Path

import fsspec
import pytest

from core.config.replay import ReplaySection, TableSection
from core.replay.object_log import ObjectSegmentLog
from core.replay.segments import SegmentLog
from core.replay.store import ShardStore
from core.storage.paths import RunStorage, absolute, is_url, join, node_local_reason, shared_storage_problems

sys.path.insert(0, str(Path(__file__).resolve().parents[2] / "benchmarks"))
from _transitions import cartpole_batch  # noqa: E402


def test_run_storage_explicit_keys_win_then_run_storage_then_run_dir():
    s = RunStorage.resolve("s3://b/evolve", None, "/mnt/shared/replay", "runs/x")
    assert (s.registry, s.replay, s.train) == ("s3://b/evolve/registry", "/mnt/shared/replay", "s3://b/evolve/train")
    assert s.keys == {"registry": "run.storage", "replay": "replay.dir", "train": "run.storage"}
    d = RunStorage.resolve(None, None, None, "runs/x")
    assert d.replay == str(Path("runs/x/replay"))
    assert d.absolute().replay == str(Path.cwd() / "runs/x/replay")


def test_node_local_places_are_named_by_the_key_to_change():
    default = shared_storage_problems(RunStorage.resolve(None, None, None, "runs/x"))
    assert len(default) == 1 and default[0].startswith("run.storage")
    assert "registry and replay and train" in default[0] and "relative path" in default[0]
    mixed = shared_storage_problems(RunStorage.resolve("/mnt/shared", "memory://reg", "rel/replay", "runs/x"))
    assert [p.split(":")[0] for p in mixed] == ["registry.uri", "replay.dir"]
    assert shared_storage_problems(RunStorage.resolve("s3://b/e", None, None, "runs/x")) == []
    assert shared_storage_problems(RunStorage.resolve("/mnt/shared", None, None, "runs/x")) == []
    assert node_local_reason("file://rel") is not None and node_local_reason("file:///abs") is None


def test_urls_keep_their_scheme_and_paths_their_separators():
    assert is_url("s3://b/p") and is_url("gs://b") and not is_url("/tmp/x") and not is_url("file:///tmp/x")
    assert join("s3://b/p/", "shard-000", "t") == "s3://b/p/shard-000/t"
    assert join("/tmp/x", "shard-000") == str(Path("/tmp/x/shard-000"))
    assert absolute("s3://b/p") == "s3://b/p"


def _cfg(capacity=4096):
    return ReplaySection(num_shards=1, tables={"transitions": TableSection(kind="transitions", obs_dim=4,
                                                                         capacity=capacity)})


def test_shard_store_on_a_url_recovers_from_objects():
    url = f"memory://evolve-{uuid.uuid4().hex[:8]}/replay"
    store = ShardStore(_cfg(), url)
    assert isinstance(store.tables["transitions"].log, ObjectSegmentLog)
    for i in range(5):
        store.add("transitions", cartpole_batch(16, i * 16))
    fs = fsspec.filesystem("memory")
    names = [k.rsplit("/", 1)[-1] for k in fs.find(url.removeprefix("memory://"))]
    assert sum(n.startswith("seg-") for n in names) == 5  # one object per acknowledged add
    again = ShardStore(_cfg(), url)
    assert set(again.export("transitions").column("id").to_pylist()) == {f"bench-{i}" for i in range(80)}
    assert again.add("transitions", cartpole_batch(16, 0)) == {"accepted": 0, "duplicates": 16}


def test_evicted_objects_are_deleted_and_the_head_recorded():
    url = f"memory://evolve-{uuid.uuid4().hex[:8]}/replay"
    store = ShardStore(_cfg(capacity=64), url)
    for i in range(10):
        store.add("transitions", cartpole_batch(16, i * 16))
    log = store.tables["transitions"].log
    assert len(log.segments) <= 64 // 16 + 1
    again = ShardStore(_cfg(capacity=64), url)
    ids = again.export("transitions").column("id").to_pylist()
    assert ids == [f"bench-{i}" for i in range(160 - 64, 160)]


def test_an_unreadable_object_is_quarantined_not_deleted():
    url = f"memory://evolve-{uuid.uuid4().hex[:8]}/t"
    fs = fsspec.filesystem("memory")
    root = url.removeprefix("memory://")
    good = ObjectSegmentLog(url, cartpole_batch(1, 0).schema)
    good.append(0, cartpole_batch(8, 0))
    fs.pipe_file(f"/{root}/seg-000000000008.arrow", b"not arrow at all")
    log = ObjectSegmentLog(url, cartpole_batch(1, 0).schema)
    recovered = sum(b.num_rows for _, b in log.recover())
    assert recovered == 8
    assert any("quarantine/seg-000000000008.arrow" in k for k in fs.find(root))


def test_local_paths_keep_the_appending_file_log(tmp_path):
    store = ShardStore(_cfg(), tmp_path / "replay")
    assert isinstance(store.tables["transitions"].log, SegmentLog)
    store.add("transitions", cartpole_batch(16, 0))
    assert (tmp_path / "replay" / "shard-000" / "transitions").is_dir()


@pytest.mark.parametrize("uri", ["memory://r", "runs/r"])
def test_node_local_reasons(uri):
    assert node_local_reason(uri)


def test_offline_tools_find_what_the_run_kept_under_run_storage(tmp_path):
    from cluster.errors import UserError
    from cluster.replay_cli import _run_replay
    from cluster.rollback_cli import _registry_uri
    from cluster.rundir import RunDir
    from core.config.loader import load_config

    shared = tmp_path / "shared"
    (shared / "replay").mkdir(parents=True)
    (shared / "registry").mkdir()
    rd = RunDir(tmp_path / "run")
    rd.write_config(load_config(None, [f"run.storage={shared}"]))
    rd.close()
    assert _run_replay(str(rd.path))[1] == shared / "replay"
    assert _registry_uri(None, str(rd.path)) == str(shared / "registry")
    remote = RunDir(tmp_path / "remote")
    remote.write_config(load_config(None, ["run.storage=s3://bucket/evolve"]))
    remote.close()
    with pytest.raises(UserError, match="s3://bucket/evolve/replay"):
        _run_replay(str(remote.path))
    assert _registry_uri(None, str(remote.path)) == "s3://bucket/evolve/registry"
