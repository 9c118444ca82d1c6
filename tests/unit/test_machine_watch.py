"""benchmarks/machine_watch.py: what counts as the measured run and what as other work on the machine."""

from __future__ import annotations

import os
import shutil
import signal
import subprocess
import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[2] / "benchmarks"))

from machine_watch import MachineWatch, Proc, busy, in_tree, outside  # noqa: E402
from run_memory import RunMemory  # noqa: E402

ME = 10


def test_the_runs_tree_and_the_watcher_are_not_other_work():
    procs = [
        Proc(1, 0, "init", 0.0),
        Proc(ME, 1, "python", 0.9),  # the benchmark itself
        Proc(20, 1, "python", 0.1),  # the run's driver
        Proc(21, 20, "gcs_server", 0.05),  # its Ray cluster
        Proc(22, 21, "raylet", 0.05),
        Proc(23, 22, "ray::ServeReplica", 0.7),  # a worker: a grandchild of the driver
        Proc(30, 1, "gcs_server", 0.1),  # another session's cluster ...
        Proc(31, 30, "ray::RayTrainWorker", 0.8),  # ... and its learner
        Proc(40, 1, "pytest", 0.5),
    ]
    cpu, clusters = outside(procs, root_pid=20, me=ME)
    assert round(cpu, 6) == 1.4 and clusters == 1
    cpu, clusters = outside(procs, root_pid=None, me=ME)  # before the run starts: all of it is other work
    assert round(cpu, 6) == 2.3 and clusters == 2


def test_a_parent_loop_in_the_table_does_not_hang():
    cpu, clusters = outside([Proc(5, 6, "a", 0.5), Proc(6, 5, "b", 0.5)], root_pid=99, me=ME)
    assert cpu == 1.0 and clusters == 0


def test_busy_names_other_ray_clusters_and_other_cpu_use():
    quiet = {"other_cpu_median": 0.1, "other_cpu_max": 0.9, "other_ray_clusters_max": 0, "cpus": 2, "samples": 40}
    assert busy(quiet) is None
    assert "1 other Ray cluster" in busy({**quiet, "other_ray_clusters_max": 1})
    assert "1.2 of its 2 CPUs" in busy({**quiet, "other_cpu_median": 1.2})
    assert busy({**quiet, "other_cpu_median": None, "samples": 0}) is None  # a run too short to sample


def test_a_real_gcs_server_counts_unless_it_is_in_the_runs_tree(tmp_path):
    fake = tmp_path / "gcs_server"  # the process name Ray's GCS runs under
    shutil.copy(shutil.which("sleep"), fake)
    # started through a shell that exits at once: the process is nobody's child here, like another session's
    pid = int(subprocess.run(["sh", "-c", f"{fake} 60 >/dev/null 2>&1 & echo $!"], capture_output=True,
                             text=True, check=True).stdout)
    try:
        watch = MachineWatch()
        _, with_it = watch.sample()
        watch.root_pid = pid
        _, without_it = watch.sample()
        assert with_it == without_it + 1
    finally:
        os.kill(pid, signal.SIGKILL)


def test_the_runs_tree_is_the_root_and_its_descendants():
    procs = [Proc(1, 0, "init", 0), Proc(20, 1, "python", 0), Proc(21, 20, "raylet", 0), Proc(23, 21, "w", 0),
             Proc(30, 1, "other", 0), Proc(5, 6, "a", 0), Proc(6, 5, "b", 0)]
    assert in_tree(procs, 20) == [20, 21, 23]
    assert in_tree(procs, 5) == [5, 6]


def test_run_memory_keeps_each_roles_largest_process_per_sample():
    memory = RunMemory()
    mib = 2**20
    memory.add([("ray::ServeReplica:sentiment:Feedback", 300 * mib), ("ray::ServeReplica:sentiment:Ingress", 100 * mib),
                ("ray::RayTrainWorker.run_train_fn", 500 * mib), ("ray::RayTrainWorker", 200 * mib),
                ("/usr/bin/python -m cluster.cli run", 900 * mib), ("ray::IDLE", 50 * mib)])
    memory.add([("ray::ServeReplica:sentiment:Feedback.handle_request_with_rejection", 320 * mib),
                ("ray::RayTrainWorker.run_train_fn", 450 * mib)])  # busy workers: their titles name the method
    report = memory.report()
    assert report["ray::RayTrainWorker"] == {"first_mib": 500.0, "mid_mib": 450.0, "max_mib": 500.0, "last_mib": 450.0,
                                             "samples": 2}
    assert report["ray::ServeReplica:sentiment:Feedback"]["last_mib"] == 320.0  # one role, idle or busy
    assert "ray::IDLE" in report and not any("cluster.cli" in role for role in report)  # only Ray workers
    head = memory.headline()
    assert head["replica"]["max_mib"] == 320.0  # the largest replica: the feedback app's, not the ingress
    assert head["learner"]["first_mib"] == 500.0
    assert RunMemory().headline() == {"replica": None, "learner": None}


def test_a_watched_process_trees_memory_is_read(tmp_path):
    watch = MachineWatch()
    watch.root_pid = os.getpid()
    watch.sample()
    assert watch.memory.series == {}  # pytest is not a Ray worker: nothing to report, no error
