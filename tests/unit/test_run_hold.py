"""One run per storage (core.storage.run_hold): an flock on a local run directory, a lease object on an
object store (memory:// here; the SeaweedFS S3 gateway in tests/integration/test_storage_s3.py),
and the conditional writes a lease rests on."""

from __future__ import annotations

import json
import os
import socket
import subprocess
import sys
import threading
import time
import uuid

import fsspec
import pytest

from cluster.cli import main
from core.storage.conditional_put import ConditionalStore, Precondition, precondition_failed
from core.storage.object_lease import LeaseHeld, LeaseLost, ObjectLease
from core.storage.run_hold import HOLD_FILE, LEASE_OBJECT, RunHold, StorageHeld, hold_places

REPO = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
HOLDER = r"""
import sys
from core.storage.run_hold import RunHold
hold = RunHold([sys.argv[1]], "first")
hold.acquire()
print("held", hold.holder["run_id"], flush=True)
sys.stdin.readline()  # until the test says, or kills it
hold.release()
"""


@pytest.fixture
def holder_process(tmp_path):
    """A real process holding a place; yields (process, its run id)."""
    procs = []

    def start(place: str):
        proc = subprocess.Popen([sys.executable, "-c", HOLDER, place], cwd=REPO, env={**os.environ, "PYTHONPATH": REPO},
                                stdin=subprocess.PIPE, stdout=subprocess.PIPE, text=True)
        procs.append(proc)
        line = proc.stdout.readline().split()
        assert line[:1] == ["held"], f"the holder did not start: {line}"
        return proc, line[1]

    yield start
    for proc in procs:
        if proc.poll() is None:
            proc.kill()
        proc.wait(timeout=30)


def _memory_url() -> str:
    return f"memory://hold-{uuid.uuid4().hex[:8]}/storage"


def test_places_are_absolute_each_once_and_none_inside_another(tmp_path):
    run = tmp_path / "run"
    assert hold_places(run, None, None) == [str(run)]
    assert hold_places(run, str(run), str(run / "replay")) == [str(run)]
    assert hold_places(run, "s3://b/evolve", "s3://b/evolve/replay") == [str(run), "s3://b/evolve"]
    assert hold_places(run, None, "s3://b/replay") == [str(run), "s3://b/replay"]


def test_a_second_hold_on_a_live_processes_directory_is_refused_naming_it(tmp_path, holder_process):
    place = str(tmp_path / "run")
    proc, run_id = holder_process(place)
    with pytest.raises(StorageHeld) as refused:
        RunHold([place], "second").acquire()
    said = str(refused.value)
    assert "\n" not in said
    for part in (place, "run 'first'", f"id {run_id}", f"pid {proc.pid}", f"on {socket.gethostname()}", "started 2"):
        assert part in said, said


def test_a_killed_holders_directory_is_taken_over_saying_so(tmp_path, holder_process):
    place = str(tmp_path / "run")
    proc, run_id = holder_process(place)
    proc.kill()  # SIGKILL: no release; the kernel frees the flock, the record stays
    proc.wait(timeout=30)
    hold = RunHold([place], "next")
    lines = hold.acquire()
    assert len(lines) == 1 and "taken over" in lines[0] and f"pid {proc.pid}" in lines[0] and run_id in lines[0]
    assert json.loads((tmp_path / "run" / HOLD_FILE).read_text())["run_id"] == hold.holder["run_id"]
    hold.release()
    assert RunHold([place], "after a clean release").acquire() == []  # nothing to take over


def test_a_refused_hold_keeps_nothing(tmp_path):
    a, b = str(tmp_path / "a"), _memory_url()
    other = RunHold([b], "holds b")
    other.acquire()
    with pytest.raises(StorageHeld):
        RunHold([a, b], "wants both").acquire()
    again = RunHold([a], "a is free")
    assert again.acquire() == []  # the refused hold let go of a
    again.release()
    other.release()


def test_run_directories_and_their_lock_are_private(tmp_path):
    hold = RunHold([str(tmp_path / "new" / "run")], "x")
    hold.acquire()
    assert (tmp_path / "new" / "run").stat().st_mode & 0o777 == 0o700
    assert (tmp_path / "new" / "run" / HOLD_FILE).stat().st_mode & 0o777 == 0o600
    hold.release()


def test_evolve_run_on_a_held_directory_exits_2_before_starting_anything(tmp_path, capsys):
    run_dir = tmp_path / "run"
    hold = RunHold([str(run_dir)], "live")
    hold.acquire()
    try:
        code = main(["run", os.path.join(REPO, "configs/default.yaml"), "--run-dir", str(run_dir),
                     "--set", "loops={}", "--budget-s", "1"])
    finally:
        hold.release()
    err = capsys.readouterr().err.strip()
    assert code == 2
    assert err.count("\n") == 0 and err.startswith("evolve: refused: run directory") and "run 'live'" in err, err
    assert not (run_dir / "events.jsonl").exists()  # refused before anything was written


# ---- leases on an object store ----------------------------------------------------------------

def test_a_live_lease_is_refused_and_an_expired_one_taken_over():
    url, fs = _memory_url(), fsspec.filesystem("memory")
    path = f"{url.removeprefix('memory://')}/{LEASE_OBJECT}"
    now = [1000.0]
    first = ObjectLease(fs, path, {"run": "first"}, ttl_s=30, clock=lambda: now[0])
    assert first.acquire() is None
    with pytest.raises(LeaseHeld) as held:
        ObjectLease(fs, path, {"run": "second"}, ttl_s=30, clock=lambda: now[0] + 29).acquire()
    assert held.value.holder["run"] == "first"
    second = ObjectLease(fs, path, {"run": "second"}, ttl_s=30, clock=lambda: now[0] + 45)
    taken = second.acquire()
    assert taken["run"] == "first" and "expired 15s ago" in taken["stale_because"]
    with pytest.raises(LeaseLost, match="run 'second'"):
        first.renew()  # judged stale: its renewal finds the object replaced
    first.release()  # must not delete the lease it lost
    assert json.loads(fs.cat_file(path))["run"] == "second"
    second.release()
    assert not fs.exists(path)


def test_a_lease_of_a_dead_process_on_this_host_is_stale_at_once():
    fs = fsspec.filesystem("memory")
    path = f"{_memory_url().removeprefix('memory://')}/{LEASE_OBJECT}"
    gone = subprocess.Popen([sys.executable, "-c", "pass"])
    gone.wait(timeout=30)
    record = {"run": "crashed", "pid": gone.pid, "host": socket.gethostname(), "renewed_at": time.time(),
              "ttl_s": 300.0}
    fs.pipe_file(path, json.dumps(record).encode())
    taken = ObjectLease(fs, path, {"run": "next"}).acquire()
    assert taken["run"] == "crashed" and taken["stale_because"] == "its process is no longer running"


def test_a_run_whose_lease_is_taken_over_is_told():
    url = _memory_url()
    lost = threading.Event()
    first = RunHold([url], "first", ttl_s=0.3)
    first.on_lost = lambda why: lost.set()
    first.acquire()
    late = RunHold([url], "second", ttl_s=0.3, clock=lambda: time.time() + 60)  # sees the first as expired
    assert "taken over" in late.acquire()[0]
    assert lost.wait(timeout=10), "the first holder was not told it lost its lease"
    first.release()
    late.release()


def test_conditional_writes_refuse_what_changed():
    fs = fsspec.filesystem("memory")
    store, path = ConditionalStore(fs), f"{_memory_url().removeprefix('memory://')}/obj"
    assert store.atomic and store.read(path) is None
    tag = store.create(path, b"one")
    with pytest.raises(Precondition):
        store.create(path, b"two")
    newer = store.replace(path, b"two", tag)
    with pytest.raises(Precondition):
        store.replace(path, b"three", tag)  # the tag of what was there before
    with pytest.raises(Precondition):
        store.delete(path, tag)
    assert store.read(path) == (b"two", newer)
    store.delete(path, newer)
    assert store.read(path) is None


def test_an_s3_412_reads_as_a_precondition():
    from botocore.exceptions import ClientError

    refused = ClientError({"Error": {"Code": "PreconditionFailed", "Message": "At least one of the pre-conditions"},
                           "ResponseMetadata": {"HTTPStatusCode": 412}}, "PutObject")
    try:
        try:
            raise refused
        except ClientError as exc:
            raise OSError(22, "At least one of the pre-conditions you specified did not hold") from exc
    except OSError as translated:  # what s3fs raises for SeaweedFS's 412
        assert precondition_failed(translated)
    assert not precondition_failed(OSError(22, "Invalid argument"))


def test_an_unreachable_store_is_one_line_exit_1(tmp_path, capsys, monkeypatch):
    for key, value in {"AWS_ENDPOINT_URL": "http://127.0.0.1:9", "AWS_ACCESS_KEY_ID": "x", "AWS_SECRET_ACCESS_KEY": "x",
                       "AWS_REGION": "us-east-1", "AWS_MAX_ATTEMPTS": "1"}.items():
        monkeypatch.setenv(key, value)  # port 9 (discard): nothing answers
    code = main(["run", os.path.join(REPO, "configs/default.yaml"), "--run-dir", str(tmp_path / "run"),
                 "--set", "loops={}", "--set", f"run.storage=s3://nowhere-{uuid.uuid4().hex[:8]}/evolve"])
    err = capsys.readouterr().err.strip()
    assert code == 1 and err.count("\n") == 0 and err.startswith("evolve: error: cannot hold storage s3://"), err
    assert RunHold([str(tmp_path / "run")], "after").acquire() == []  # the directory was let go
