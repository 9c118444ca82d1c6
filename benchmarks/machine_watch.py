"""How busy the machine is with work other than the run being measured, sampled while it runs.

A loop's Ray actors run at Ray's worker niceness (15): any other busy process on the machine
(another session's Ray cluster, an in-process benchmark, a test run) takes their CPU first, and
a run on a busy two-core machine serves a fraction of the events it serves on a quiet one,
whatever it runs.  A figure from such a run does not compare with one from a quiet run, so the
benchmarks that run live loops record this beside their figures.

    watch = MachineWatch(); watch.start(run_pid) ... watch.stop() -> {
        other_cpu_median, other_cpu_max: CPUs used by processes outside the run's tree (and this one)
        other_ray_clusters_max: Ray clusters (one GCS server each) outside the run's tree
        cpus, samples, run_memory: the run's replica and learner resident memory (run_memory.py) }
"""

from __future__ import annotations

import os
import statistics
import threading
from dataclasses import dataclass
from typing import Iterable

from run_memory import RunMemory

GCS = "gcs_server"


@dataclass(frozen=True)
class Proc:
    pid: int
    ppid: int
    name: str
    cpu: float  # CPUs used since the previous sample (1.0 = one core busy)


def outside(procs: Iterable[Proc], root_pid: int | None, me: int) -> tuple[float, int]:
    """(CPUs used, Ray clusters run) by the processes that are neither `root_pid`'s tree nor `me`."""
    procs = list(procs)
    parent = {p.pid: p.ppid for p in procs}

    def ours(pid: int) -> bool:
        seen = set()
        while pid and pid not in seen:
            if pid in (root_pid, me):
                return True
            seen.add(pid)
            pid = parent.get(pid, 0)
        return False

    others = [p for p in procs if not ours(p.pid)]
    return sum(p.cpu for p in others), sum(p.name == GCS for p in others)


def in_tree(procs: Iterable[Proc], root_pid: int) -> list[int]:
    """The pids of `root_pid` and its descendants."""
    procs = list(procs)
    children: dict[int, list[int]] = {}
    for p in procs:
        children.setdefault(p.ppid, []).append(p.pid)
    found, todo = set(), [root_pid]
    while todo:
        pid = todo.pop()
        if pid not in found:  # a parent loop in the table must not hang
            found.add(pid)
            todo.extend(children.get(pid, []))
    return sorted(found)


class MachineWatch:
    def __init__(self, interval_s: float = 5.0):
        import psutil

        self.psutil, self.interval_s = psutil, interval_s
        self.root_pid: int | None = None
        self.memory = RunMemory()  # the run's own workers: resident memory per role
        self.cpu: list[float] = []
        self.clusters: list[int] = []
        self._stop = threading.Event()
        self._thread: threading.Thread | None = None
        self.sample()  # primes each process's CPU counter: the first reading of a process is 0

    def sample(self) -> tuple[float, int]:
        procs = []
        for p in self.psutil.process_iter(["pid", "ppid", "name"]):  # psutil keeps the Process objects
            try:
                procs.append(Proc(p.info["pid"], p.info["ppid"] or 0, p.info["name"] or "", p.cpu_percent() / 100))
            except self.psutil.Error:  # gone or not ours to read
                continue
        if self.root_pid is not None:
            self.memory.sample(in_tree(procs, self.root_pid))
        return outside(procs, self.root_pid, os.getpid())

    def start(self, root_pid: int) -> None:
        self.root_pid = root_pid
        self._thread = threading.Thread(target=self._run, daemon=True)
        self._thread.start()

    def _run(self) -> None:
        while not self._stop.wait(self.interval_s):
            cpu, clusters = self.sample()
            self.cpu.append(cpu)
            self.clusters.append(clusters)

    def stop(self) -> dict[str, float | int | None]:
        self._stop.set()
        if self._thread is not None:
            self._thread.join()
        return {"other_cpu_median": round(statistics.median(self.cpu), 2) if self.cpu else None,
                "other_cpu_max": round(max(self.cpu), 2) if self.cpu else None,
                "other_ray_clusters_max": max(self.clusters, default=0),
                "cpus": os.cpu_count() or 1, "samples": len(self.cpu), "run_memory": self.memory.headline()}


def busy(figures: dict[str, float | int | None]) -> str | None:
    """Why a run's machine was too busy for its figures to compare with a quiet run's, else None."""
    if figures["other_ray_clusters_max"]:
        return f"{figures['other_ray_clusters_max']} other Ray cluster(s) ran beside it"
    other = figures["other_cpu_median"]
    if other is not None and other > 0.25 * figures["cpus"]:
        return f"other processes used a median {other} of its {figures['cpus']} CPUs"
    return None
