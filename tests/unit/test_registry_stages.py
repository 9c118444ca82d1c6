"""Stage changes under a lock and as compare-and-swap; run leases refuse an offline rollback.

Two processes promoting at once (multiprocessing, the real flock) must never
lose an update; a CAS whose expected version is gone changes nothing.
"""

from __future__ import annotations

import json
import multiprocessing as mp
import os
import socket

import numpy as np
import pytest

from cluster.cli import main
from core.storage.registry import PolicyRegistry, RegistryError, StageConflict
from core.storage.registry_lease import LEASE_DIR, RegistryInUse, RegistryLease, live_runs, refuse_if_live
from gate.pointer import rollback_registry


def _w(seed: int = 0) -> dict:
    return {"w": np.full(3, seed, dtype=np.float32)}


@pytest.fixture
def reg(tmp_path):
    return PolicyRegistry(tmp_path / "registry")


def _live(reg: PolicyRegistry, policy: str = "p") -> int | None:
    return (reg.stages(policy).get("live") or {}).get("version")


# ---- compare-and-swap ------------------------------------------------------------------------


def test_promote_with_the_expected_version_moves_the_pointer(reg):
    v1, v2 = reg.publish("p", _w(1)), reg.publish("p", _w(2))
    reg.promote("p", v1, expect=None)  # nothing live yet: None is what is expected
    reg.promote("p", v2, expect=v1)
    assert _live(reg) == v2 and reg.stages("p")["live"]["history"] == [v1, v2]


def test_promote_against_a_moved_pointer_is_a_conflict_and_changes_nothing(reg):
    v1, v2, v3 = (reg.publish("p", _w(s)) for s in (1, 2, 3))
    reg.promote("p", v1)
    reg.promote("p", v2)  # another writer moved live meanwhile
    before = json.dumps(reg.stages("p"))
    with pytest.raises(StageConflict, match=r"'live' is v2, not v1 as expected"):
        reg.promote("p", v3, expect=v1)
    with pytest.raises(StageConflict, match="not no version"):
        reg.promote("p", v3, expect=None)
    assert json.dumps(reg.stages("p")) == before


def test_clear_and_rollback_are_compare_and_swap_too(reg):
    v1, v2 = reg.publish("p", _w(1)), reg.publish("p", _w(2))
    reg.promote("p", v1), reg.promote("p", v2)
    reg.promote("p", v2, stage="canary")
    with pytest.raises(StageConflict):
        reg.clear("p", "canary", expect=v1)
    reg.clear("p", "canary", expect=v2)
    assert reg.stages("p")["canary"]["version"] is None
    with pytest.raises(StageConflict):
        reg.rollback("p", expect=v1)
    assert reg.rollback("p", expect=v2) == v1 and _live(reg) == v1


def test_rollback_registry_refuses_when_live_moved_after_it_looked(reg, monkeypatch):
    v1, v2, v3 = (reg.publish("p", _w(s)) for s in (1, 2, 3))
    for v in (v1, v2):
        reg.promote("p", v)
    real = reg.rollback

    def moved_meanwhile(*args, **kwargs):  # a promotion lands between the read and the write
        reg.promote("p", v3)
        return real(*args, **kwargs)

    monkeypatch.setattr(reg, "rollback", moved_meanwhile)
    with pytest.raises(StageConflict):
        rollback_registry(reg, "p", reason="test")
    assert _live(reg) == v3 and "rolled_back" not in reg.get("p", v2).info  # nothing marked


# ---- the lock: two processes, no lost update -----------------------------------------------


def _promote_many(root: str, versions: list[int], start) -> None:
    start.wait()
    reg = PolicyRegistry(root)
    for v in versions:
        reg.promote("p", v)


def test_two_processes_promoting_at_once_never_lose_an_update(reg):
    versions = [reg.publish("p", _w(s)) for s in range(6)]
    per_process = 300
    ctx = mp.get_context("spawn")  # no fork of a process with threads
    start = ctx.Event()
    procs = [ctx.Process(target=_promote_many, args=(reg.uri, versions[k::2] * (per_process // 3), start))
             for k in range(2)]
    for p in procs:
        p.start()
    start.set()
    for p in procs:
        p.join(timeout=120)
        assert p.exitcode == 0
    history = reg.stages("p")["live"]["history"]
    # without the lock, read-modify-write races drop appends; with it every promotion is there
    assert len(history) == 2 * per_process
    assert sorted(set(history)) == versions


# ---- leases -----------------------------------------------------------------------------------


def test_a_live_run_refuses_the_offline_rollback_with_one_line(tmp_path, capsys):
    reg = PolicyRegistry(tmp_path / "registry")
    for s in (1, 2):
        reg.promote("sentiment", reg.publish("sentiment", _w(s)))
    with RegistryLease(reg.uri, "demo", str(tmp_path), ttl_s=30):
        assert main(["rollback", "sentiment", "--run-dir", str(tmp_path)]) == 1
        err = capsys.readouterr().err.strip()
        assert "\n" not in err and "run 'demo'" in err and f"pid {os.getpid()}" in err and "--address auto" in err
        assert _live(reg, "sentiment") == 2  # the pointer did not move
    assert live_runs(reg.uri) == []  # released at the end of the run
    assert main(["rollback", "sentiment", "--run-dir", str(tmp_path)]) == 0
    assert _live(reg, "sentiment") == 1


def test_a_lease_goes_stale_after_its_ttl_without_renewal(tmp_path):
    uri = str(tmp_path / "registry")
    clock = [1000.0]
    lease = RegistryLease(uri, "demo", ttl_s=30, clock=lambda: clock[0]).acquire(heartbeat=False)
    assert [r["run"] for r in live_runs(uri, now=1029.0)] == ["demo"]
    with pytest.raises(RegistryInUse, match="refused: run 'demo'"):
        refuse_if_live(uri, "roll back", now=1029.0)
    assert live_runs(uri, now=1031.0) == []  # killed without cleanup: stale after ttl_s
    refuse_if_live(uri, "roll back", now=1031.0)
    clock[0] = 1031.0
    lease.renew()  # a heartbeat makes it live again
    assert live_runs(uri, now=1050.0)
    lease.release()


def test_a_lease_of_a_dead_process_on_this_host_is_stale_at_once(tmp_path):
    uri = str(tmp_path / "registry")
    ctx = mp.get_context("spawn")
    child = ctx.Process(target=int)
    child.start()
    child.join()  # its pid is gone now
    lease_dir = tmp_path / "registry" / LEASE_DIR
    lease_dir.mkdir(parents=True)
    fresh = {"run": "ghost", "host": socket.gethostname(), "pid": child.pid, "renewed_at": 1e12, "ttl_s": 30}
    (lease_dir / "ghost.json").write_text(json.dumps(fresh))
    (lease_dir / "torn.json").write_text("{half")  # a crash mid-write is not a live run
    assert live_runs(uri, now=1e12) == []


def test_the_heartbeat_renews_the_lease(tmp_path):
    uri = str(tmp_path / "registry")
    lease = RegistryLease(uri, "demo", ttl_s=0.3).acquire()
    try:
        first = json.loads(open(lease.path).read())["renewed_at"]

        def renewed():
            return json.loads(open(lease.path).read())["renewed_at"] > first

        from tests.integration.helpers import wait_until

        wait_until(renewed, 5, "a renewed lease", every_s=0.05)
    finally:
        lease.release()
    assert not os.path.exists(lease.path)


def test_a_stage_lock_held_on_an_object_store_names_its_holder_and_changes_nothing(monkeypatch):
    import uuid

    from core.storage import registry_locks
    from core.storage.object_lease import ObjectLease

    reg = PolicyRegistry(f"memory://evolve-test-{uuid.uuid4().hex}")
    v = reg.publish("p", _w(0))
    other = ObjectLease(reg.fs, f"{reg.root}/p/{registry_locks.STAGE_LEASE}", {"what": "a stage change"})
    other.acquire()  # another writer, mid-change
    monkeypatch.setattr(registry_locks, "STAGE_LOCK_WAIT_S", 0.3)
    with pytest.raises(RegistryError, match=r"stage lock is held by a stage change \(pid \d+ on .*nothing changed"):
        reg.promote("p", v)
    assert reg.stages("p") == {}
    other.release()
    reg.promote("p", v)
    assert reg.stages("p")["live"]["version"] == v
