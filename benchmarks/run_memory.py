"""Resident memory of a live run's Ray workers, sampled while it runs.

A loop that runs for days must hold its memory flat: the wide model's hash size fixes its
weights, the replay tables their capacity.  This records, for each Ray worker role of the run
(the process title Ray sets, `ray::ServeReplica:<app>:<deployment>`, `ray::RayTrainWorker`, ...,
with the method a busy worker's title adds dropped), the resident set of its largest process at each sample, and
reports the first, middle, largest and last of them in MiB: a last far above the middle is growth
(the first is taken while the worker still loads).

    memory = RunMemory(); memory.sample(tree_pids) ... memory.report() -> {role: {first_mib, mid_mib, max_mib, last_mib}}
"""

from __future__ import annotations

from typing import Iterable

MIB = 2**20
ROLES = {"replica": "ray::ServeReplica", "learner": "ray::RayTrainWorker"}


def role_of(title: str) -> str | None:
    """The worker role a process title names (the title's first word, method suffix dropped), or None."""
    if not title.startswith("ray::"):
        return None
    head = title.split()[0]
    # a busy worker's title names its method: ray::RayTrainWorker.run_train_fn -> ray::RayTrainWorker,
    # ray::ServeReplica:app:deployment.handle_request -> ray::ServeReplica:app:deployment
    prefix, _, last = head.rpartition(":")
    return f"{prefix}:{last.split('.')[0]}" if prefix else head.split(".")[0]


class RunMemory:
    def __init__(self) -> None:
        self.series: dict[str, list[int]] = {}

    def add(self, rss_by_title: Iterable[tuple[str, int]]) -> None:
        """One sample: (process title, resident bytes) of every process of the run."""
        largest: dict[str, int] = {}
        for title, rss in rss_by_title:
            role = role_of(title)
            if role is not None:
                largest[role] = max(largest.get(role, 0), rss)
        for role, rss in largest.items():
            self.series.setdefault(role, []).append(rss)

    def sample(self, pids: Iterable[int]) -> None:
        import psutil

        found = []
        for pid in pids:
            try:
                p = psutil.Process(pid)
                found.append((" ".join(p.cmdline()), p.memory_info().rss))
            except psutil.Error:  # gone, or not ours to read
                continue
        self.add(found)

    def report(self) -> dict[str, dict[str, float]]:
        return {role: {"first_mib": round(s[0] / MIB, 1), "mid_mib": round(s[len(s) // 2] / MIB, 1),
                       "max_mib": round(max(s) / MIB, 1), "last_mib": round(s[-1] / MIB, 1), "samples": len(s)}
                for role, s in sorted(self.series.items())}

    def headline(self) -> dict[str, dict[str, float] | None]:
        """The replica's and the learner's figures (the largest replica: the feedback app's)."""
        rep = self.report()
        out: dict[str, dict[str, float] | None] = {}
        for name, prefix in ROLES.items():
            mine = [v for role, v in rep.items() if role.startswith(prefix)]
            out[name] = max(mine, key=lambda v: v["max_mib"]) if mine else None
        return out
