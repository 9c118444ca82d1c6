"""The run-level sections: the run itself, the Ray cluster it runs on, the registry, where learners run."""

from __future__ import annotations

from pathlib import Path

from pydantic import Field, field_validator

from core.config.base import NAME_PATTERN as _NAME
from core.config.base import Section


class RunSection(Section):
    name: str = "default"  # the run's name: runs/<name>/, its status board, its registry lease
    # Wall-clock budget of the whole run; None runs until Ctrl-C.
    budget_s: float | None = Field(default=None, gt=0)
    # Where runs/<name>/ goes; --run-dir overrides the full path.
    runs_root: Path = Path("runs")
    run_dir: Path | None = None  # the run directory itself (--run-dir); None: <runs_root>/<name>
    # Shared state (registry/, replay/, train/) under one local path or fsspec URL; None: the run
    # directory.  On a multi-node cluster it must be shared storage (core/storage/paths.py).
    storage: str | None = None
    seed: int = 0  # the run's seed: replay sampling, traffic actors, starting classifiers
    # Seconds between progress lines / status events.
    progress_interval_s: float = Field(default=5.0, gt=0)

    @field_validator("name")
    @classmethod
    def _name_is_path_safe(cls, v: str) -> str:
        if not _NAME.match(v):
            raise ValueError("must be 1-64 characters of letters, digits, '_', '.', '-'")
        return v

    def resolved_run_dir(self) -> Path:
        return self.run_dir if self.run_dir is not None else self.runs_root / self.name


class ClusterSection(Section):
    # None starts an embedded local Ray; "auto" or "ray://host:10001" joins a running one.
    address: str | None = None
    # CPUs the embedded cluster may use; None lets Ray count them.
    num_cpus: int | None = Field(default=None, ge=1)
    num_gpus: int | None = Field(default=None, ge=0)  # GPUs the embedded cluster may use; None lets Ray count them
    include_dashboard: bool = True  # the Ray dashboard (and the state API Ray Train's cleanup uses)
    # Loopback by default: reach a remote dashboard with `ray dashboard` (SSH tunnel).
    dashboard_host: str = "127.0.0.1"
    dashboard_port: int = Field(default=8265, ge=1, le=65535)  # the Ray dashboard's port
    namespace: str = "evolve"  # the Ray namespace of the run's named actors (`evolve status` looks there)
    # Extra Ray resources each rollout, evaluator, traffic and act-client actor asks for, e.g.
    # {actors: 0.01}: they then land only on node types that carry `actors` (ray_cluster.yaml).
    actor_resources: dict[str, float] = Field(default_factory=dict)


class RegistrySection(Section):
    # Local directory or any fsspec URL (s3://bucket/evolve, memory://...);
    # None puts the registry inside the run directory.
    uri: str | None = None


class LearnerSection(Section):
    """Where every loop's Ray Train learner runs; what it learns and how fast is the loop's own section."""

    num_workers: int = Field(default=1, ge=1)  # Train workers (DDP ranks)
    use_gpu: bool = False  # one GPU per worker
    # Extra Ray resources per worker, e.g. {"learner": 1} so learners land on the
    # GPU node type of ray_cluster.yaml.
    resources_per_worker: dict[str, float] = Field(default_factory=dict)
    cpus_per_worker: float = Field(default=1.0, gt=0)  # reserved in Ray's scheduler
    # Worker-group failures Ray Train recovers from (restart, resume from the last checkpoint)
    # before the learner fails for good; -1: no limit. Then the loop runs on `degraded`.
    max_failures: int = Field(default=3, ge=-1)

    @field_validator("resources_per_worker")
    @classmethod
    def _non_negative(cls, v: dict[str, float]) -> dict[str, float]:
        bad = {k: x for k, x in v.items() if x < 0}
        if bad:
            raise ValueError(f"resources must be >= 0, got {bad}")
        return v
