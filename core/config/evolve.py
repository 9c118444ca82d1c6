"""Typed run configuration.

Every section forbids unknown keys so a typo fails at load time instead of
being silently ignored; `core.config.loader` turns validation errors into one
line naming the file, the key and the reason.  Each loop kind has its own
section (`rl`, `feedback`, `mlm`) that owns its learning settings; `learner`
says only where learners run.
"""

from __future__ import annotations

from pathlib import Path
from typing import Literal

from pydantic import Field, field_validator, model_validator

from core.config.base import NAME_PATTERN as _NAME
from core.auth.keys import AuthSection
from core.config.base import Section
from core.auth.tls import TLSSection
from core.stats.exploration import ExplorationSection
from core.config.feedback import FeedbackConfig
from core.config.mlm import MLMConfig
from core.config.novelty import NoveltyConfig
from core.config.replay import ReplayConfig
from core.config.rl import RLConfig


class RunConfig(Section):
    name: str = "default"
    # Wall-clock budget of the whole run; None runs until Ctrl-C.
    budget_s: float | None = Field(default=None, gt=0)
    # Where runs/<name>/ goes; --run-dir overrides the full path.
    runs_root: Path = Path("runs")
    run_dir: Path | None = None
    # Shared state (registry/, replay/, train/) under one local path or fsspec URL; None: the run
    # directory.  On a multi-node cluster it must be shared storage (core/storage/paths.py).
    storage: str | None = None
    seed: int = 0
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


class ClusterConfig(Section):
    # None starts an embedded local Ray; "auto" or "ray://host:10001" joins a running one.
    address: str | None = None
    # CPUs the embedded cluster may use; None lets Ray count them.
    num_cpus: int | None = Field(default=None, ge=1)
    num_gpus: int | None = Field(default=None, ge=0)
    include_dashboard: bool = True
    # Loopback by default: reach a remote dashboard with `ray dashboard` (SSH tunnel).
    dashboard_host: str = "127.0.0.1"
    dashboard_port: int = Field(default=8265, ge=1, le=65535)
    namespace: str = "evolve"
    # Extra Ray resources each rollout, evaluator, traffic and act-client actor asks for, e.g.
    # {actors: 0.01}: they then land only on node types that carry `actors` (ray_cluster.yaml).
    actor_resources: dict[str, float] = Field(default_factory=dict)


class ServingConfig(Section):
    enabled: bool = True
    host: str = "127.0.0.1"
    http_port: int = Field(default=8000, ge=1, le=65535)
    # Serve's gRPC proxy for the feedback app: off unless asked for, since Ray's proxy binds
    # every interface ([::]:grpc_port) whatever `host` says.
    grpc: bool = False
    grpc_port: int = Field(default=9000, ge=1, le=65535)
    # Fractional CPUs keep Serve from starving actors and learners on small machines.
    replica_num_cpus: float = Field(default=0.1, gt=0)
    # GPUs per feedback-app replica (a fraction shares one GPU); > 0: it answers on CUDA in bf16.
    replica_num_gpus: float = Field(default=0.0, ge=0)
    route_prefix: str = "/"
    # How replicas pick the answer they serve, and per policy id (core/stats/exploration.py).
    exploration: ExplorationSection = Field(default_factory=ExplorationSection)
    exploration_by_policy: dict[str, ExplorationSection] = Field(default_factory=dict)
    # API keys, scopes and per-key limits (core/auth/keys.py); on by default whenever a listener is
    # reachable beyond loopback (host, or grpc).
    auth: AuthSection = Field(default_factory=AuthSection)
    # HTTPS on the HTTP proxy: {certfile, keyfile} (core/auth/tls.py); None: plain HTTP.
    tls: TLSSection | None = None

    @model_validator(mode="after")
    def _no_open_grpc(self) -> "ServingConfig":
        if self.enabled and self.grpc and self.auth.enabled is False and not self.auth.allow_open_grpc_unsafe:
            raise ValueError("serving.grpc with serving.auth.enabled: false would answer gRPC on every interface "
                             "([::], whatever serving.host) with no key: turn auth on (`evolve keys create`), "
                             "or set serving.auth.allow_open_grpc_unsafe: true")
        return self

    def exploration_for(self, policy_id: str) -> ExplorationSection:
        return self.exploration_by_policy.get(policy_id, self.exploration)


class RegistryConfig(Section):
    # Local directory or any fsspec URL (s3://bucket/evolve, memory://...);
    # None puts the registry inside the run directory.
    uri: str | None = None


class LearnerConfig(Section):
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


# Keys that moved out of `learner:` into each loop kind's section; a config that still
# sets one is refused with the new place (core.config.loader).
MOVED_KEYS = {f"learner.{key}": key for key in ("lr", "batch_size", "checkpoint_every")}
LOOP_SECTIONS = ("rl", "feedback", "mlm", "novelty")


class EvolveConfig(Section):
    run: RunConfig = Field(default_factory=RunConfig)
    cluster: ClusterConfig = Field(default_factory=ClusterConfig)
    serving: ServingConfig = Field(default_factory=ServingConfig)
    registry: RegistryConfig = Field(default_factory=RegistryConfig)
    learner: LearnerConfig = Field(default_factory=LearnerConfig)
    replay: ReplayConfig = Field(default_factory=ReplayConfig)
    mlm: MLMConfig = Field(default_factory=MLMConfig)
    rl: RLConfig = Field(default_factory=RLConfig)
    feedback: FeedbackConfig = Field(default_factory=FeedbackConfig)
    novelty: NoveltyConfig = Field(default_factory=NoveltyConfig)
    # The loops `evolve run` starts, in this order; each kind reads the section of its name.
    loops: list[Literal["rl", "feedback", "mlm", "novelty"]] = Field(default_factory=list)

    @model_validator(mode="after")
    def _ports_differ(self) -> "EvolveConfig":
        ports = {
            "serving.http_port": self.serving.http_port,
            "serving.grpc_port": self.serving.grpc_port,
            "cluster.dashboard_port": self.cluster.dashboard_port,
        }
        if len(set(ports.values())) != len(ports):
            raise ValueError(f"ports must differ, got {ports}")
        if "rl" in self.loops:
            self._check_rl_table()
        if "feedback" in self.loops:
            self._check_feedback_tables()
        if "mlm" in self.loops and self.mlm.source == "replay":
            self._check_table("mlm.replay_table", self.mlm.replay_table, "text")
        if "novelty" in self.loops:
            self._check_novelty()
        return self

    def _check_novelty(self) -> None:
        """The novelty loop reads the request texts of a feedback loop started before it."""
        loops = self.loops
        if "feedback" not in loops or loops.index("feedback") > loops.index("novelty"):
            raise ValueError("loops: 'novelty' watches a feedback loop: list 'feedback' before it")
        if self.novelty.policy_id != self.feedback.policy_id:
            raise ValueError(f"novelty.policy_id {self.novelty.policy_id!r} must be feedback.policy_id "
                             f"{self.feedback.policy_id!r}")
        self._check_table("novelty.table", self.novelty.table, "text")

    def _check_rl_table(self) -> None:
        self._check_table("rl.table", self.rl.table, "transitions")

    def _check_feedback_tables(self) -> None:
        fb = self.feedback
        wanted = [("feedback.feedback_table", fb.feedback_table, "feedback")]
        if fb.text_table is not None:
            wanted.append(("feedback.text_table", fb.text_table, "text"))
        for key, name, kind in wanted:
            self._check_table(key, name, kind)

    def _check_table(self, key: str, name: str, kind: str) -> None:
        table = self.replay.tables.get(name) if self.replay.enabled else None
        if table is None:
            raise ValueError(f"{key} {name!r} must be a table declared under replay.tables")
        if table.kind != kind:
            raise ValueError(f"{key} {name!r} must be of kind {kind!r}, not {table.kind!r}")
